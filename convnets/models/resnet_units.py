"""The residual units of the CIFAR ResNets: the orderings of He et al. 2016 (Identity Mappings,
"IM") Fig. 4 as a table, the shortcut variants of IM Fig. 2, and the unit that holds them.

An ordering is data (:data:`UNIT_LAYOUTS`): which layers follow the stem conv, which come
before the split (the pre-activation), which end the residual branch, and which follow the
addition. :func:`make_unit` reads a row of that table; the basic and bottleneck units differ
only in their list of convolutions (:func:`unit_convs`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from convnets.models.common import make_dropout


def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A same-padded conv without bias: every conv is followed (or, in pre-activation units,
    preceded) by BN."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


@dataclass(frozen=True)
class UnitLayout:
    """One row of IM Fig. 4: the layers, as ``"bn-relu"``-style strings ("" for none), that
    follow the stem conv, pre-activate a unit's input, end its residual branch (after the last
    conv), follow its addition, and follow the addition of the net's last unit."""

    stem: str
    pre: str
    branch_end: str
    post: str
    last_post: str

    @property
    def preact(self) -> bool:
        """Pre-activation unit: its activation comes before the split."""
        return bool(self.pre)

    @property
    def projection_bn(self) -> bool:
        """Whether a projection shortcut ends in BN: it ends like the branch it is added to."""
        return "bn" in self.branch_end.split("-")


#: IM Fig. 4 (a)-(e). Inside a branch every conv but the last is followed by BN-ReLU. The
#: pre-activation units follow the IM appendix: the first unit's activation comes right after
#: the stem conv, the last unit's addition is followed by one more activation (the one the next
#: unit would apply). Our reading for (d), which IM leaves open: a conv-BN stem (every (d) conv
#: has its BN) and a ReLU alone after the last addition.
UNIT_LAYOUTS: dict[str, UnitLayout] = {
    #                               stem       pre        branch_end  post       last_post
    "original": UnitLayout(         "bn-relu", "",        "bn",       "relu",    "relu"),
    "bn_after_add": UnitLayout(     "bn-relu", "",        "",         "bn-relu", "bn-relu"),
    "relu_before_add": UnitLayout(  "bn-relu", "",        "bn-relu",  "",        ""),
    "relu_only_preact": UnitLayout( "bn",      "relu",    "bn",       "",        "relu"),
    "full_preact": UnitLayout(      "",        "bn-relu", "",         "",        "bn-relu"),
}  # fmt: skip
UNITS = tuple(UNIT_LAYOUTS)


def layers(spec: str, channels: int, *, inplace: bool = True, suffix: str = "") -> list:
    """``(name, module)`` pairs for ``spec`` (e.g. ``"bn-relu"``) on ``channels`` channels."""
    make = {"bn": lambda: nn.BatchNorm2d(channels), "relu": lambda: nn.ReLU(inplace=inplace)}
    return [(f"{piece}{suffix}", make[piece]()) for piece in spec.split("-") if piece]


def unit_convs(cin: int, cout: int, stride: int, bottleneck: bool) -> list[tuple[int, ...]]:
    """(cin, cout, kernel, stride) of a unit's convs: 3x3-3x3, or 1x1 (out/4) - 3x3 (out/4) -
    1x1 (out) with the stride on the first 1x1, as in the IM authors' release."""
    if not bottleneck:
        return [(cin, cout, 3, stride), (cout, cout, 3, 1)]
    mid = cout // 4
    return [(cin, mid, 1, stride), (mid, mid, 3, 1), (mid, cout, 1, 1)]


def branch(layout: UnitLayout, convs: list[tuple[int, ...]]) -> nn.Sequential:
    """The residual function F: ``conv{i}``, then ``bn{i}``, ``relu{i}`` after every conv but
    the last, and ``layout.branch_end`` after the last."""
    mods: list[tuple[str, nn.Module]] = []
    for i, (cin, cout, k, stride) in enumerate(convs, start=1):
        mods.append((f"conv{i}", conv(cin, cout, k, stride)))
        end = layout.branch_end if i == len(convs) else "bn-relu"
        mods += layers(end, cout, suffix=str(i))
    return nn.Sequential(OrderedDict(mods))


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. 2015 (Sec. 3.3): identity with stride-``stride`` subsampling
    (``x[:, :, ::2, ::2]``) and extra channels filled with zeros. No parameters.

    The new zero channels are appended after the existing ones (channel ``i`` of the input
    stays channel ``i`` of the output); the paper does not say where they go, and it changes
    nothing up to a permutation of the next layers' weights.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra > 0:
            zeros = x.new_zeros(x.shape[0], extra, x.shape[2], x.shape[3])
            x = torch.cat([x, zeros], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class Gate(nn.Module):
    """g(x) = sigmoid(BN(W_g x)), IM Sec. 3.1 / Fig. 2(c, d), one gate value per output
    channel and position.

    IM writes g(x) = sigmoid(W_g x + b_g) with W_g a 1x1 conv, and the Fig. 2 caption says BN
    follows every weight layer. We put that BN between the 1x1 conv and the sigmoid and give
    the conv no bias: BN's shift beta absorbs a bias (BN(Wx + b) = BN(Wx) for any b), so b_g
    lives in the BN shift: ``self.bn.bias`` *is* b_g (there is no separate b_g parameter), and
    it is initialised to ``gate_bias`` (IM's best b_g is -6). It is trained, and decayed, like
    every BN shift. At initialisation
    the pre-sigmoid values are then roughly N(b_g, 1) per channel in training mode and exactly
    b_g + (W_g x) / sqrt(1 + eps) in eval mode with fresh running statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = conv(in_channels, out_channels, 1, stride)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.Sigmoid()

    def set_bias(self, value: float) -> None:
        """Set b_g (the BN shift); call after :func:`he_init`, which zeroes it."""
        with torch.no_grad():
            self.bn.bias.fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualUnit(nn.Module):
    """One unit: ``post(mix(shortcut(x or pre(x)), branch(pre(x))))``.

    ``shortcut_takes_preact`` says whether the shortcut reads the unit's raw input or its
    pre-activated input (only differs for pre-activation units; see :func:`make_unit`).
    ``mode`` is the IM Fig. 2 variant used to mix the two paths.
    """

    def __init__(
        self,
        pre: nn.Module,
        branch: nn.Module,
        shortcut: nn.Module | None,
        post: nn.Module,
        *,
        shortcut_takes_preact: bool = False,
        mode: str = "identity",
        gate: Gate | None = None,
        scale_shortcut: float = 1.0,
        scale_branch: float = 1.0,
    ) -> None:
        super().__init__()
        self.pre = pre
        self.branch = branch
        self.shortcut = shortcut
        self.gate = gate
        self.post = post
        self.shortcut_takes_preact = shortcut_takes_preact
        self.mode = mode
        self.scale_shortcut = float(scale_shortcut)
        self.scale_branch = float(scale_branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        out = self.branch(a)
        if self.shortcut is None:  # plain net
            return self.post(out)
        s = self.shortcut(a if self.shortcut_takes_preact else x)
        if self.mode == "constant_scaling":
            out = self.scale_shortcut * s + self.scale_branch * out
        elif self.gate is not None:
            g = self.gate(x)  # gates only exist with original units, where pre(x) = x
            s = (1.0 - g) * s
            out = s + (g * out if self.mode == "exclusive_gating" else out)
        else:
            out = s + out
        return self.post(out)

    def extra_repr(self) -> str:
        parts = [f"mode={self.mode!r}"]
        if self.shortcut_takes_preact:
            parts.append("shortcut_takes_preact=True")
        if self.mode == "constant_scaling":
            parts.append(f"scale_shortcut={self.scale_shortcut}, scale_branch={self.scale_branch}")
        return ", ".join(parts)


@dataclass(frozen=True)
class UnitOptions:
    """What every unit of one net shares (the ``cifar_resnet`` options, validated)."""

    layout: UnitLayout
    bottleneck: bool
    plain: bool
    shortcut: str
    downsample: str
    scale_shortcut: float
    scale_branch: float
    shortcut_dropout: float
    shortcut_dropout_mode: str


def shortcut_path(cin: int, cout: int, stride: int, opts: UnitOptions) -> tuple[nn.Module, bool]:
    """The shortcut of one unit and whether it is a projection.

    A projection (``downsample="B"`` where dimensions change, or ``shortcut="conv1x1"``
    everywhere) is a 1x1 conv with the unit's stride, followed by BN when the branch ends in
    BN (units a, c, d: He et al. 2015 option B) and bare where the branch ends in a conv (b:
    the BN after the addition normalises both summands; e: the next unit's pre-activation BN
    does; a bare projection is also the IM authors' release for e). Option A is
    :class:`ZeroPadShortcut`; ``shortcut="dropout"`` (IM Fig. 2f) puts dropout on the output.
    """
    changes = stride != 1 or cin != cout
    is_projection = opts.shortcut == "conv1x1" or (changes and opts.downsample == "B")
    if is_projection:
        mods = [("conv", conv(cin, cout, 1, stride))]
        sc: nn.Module = nn.Sequential(
            OrderedDict(mods + (layers("bn", cout) if opts.layout.projection_bn else []))
        )
    elif changes:
        sc = ZeroPadShortcut(cin, cout, stride)
    else:
        sc = nn.Identity()
    if opts.shortcut == "dropout":
        drop = make_dropout(opts.shortcut_dropout, opts.shortcut_dropout_mode)
        sc = nn.Sequential(OrderedDict(path=sc, dropout=drop))
    return sc, is_projection


def make_unit(cin: int, cout: int, stride: int, opts: UnitOptions, *, first: bool,
              last: bool) -> ResidualUnit:
    """One unit of ``opts.layout``'s ordering (``first``/``last``: of the whole net).

    Which input the shortcut reads in a pre-activation unit (IM appendix): the pre-activated
    one in the net's first unit (its activation comes before the split) and in a
    dimension-increasing unit with a projection (the projection is pre-activated too); the
    raw input everywhere else, option A's zero padding included (it has no weight layer).
    """
    layout = opts.layout
    body = branch(layout, unit_convs(cin, cout, stride, opts.bottleneck))
    pre = nn.Sequential(OrderedDict(layers(layout.pre, cin, inplace=False)))
    post = nn.Sequential(OrderedDict(layers(layout.last_post if last else layout.post, cout)))
    if opts.plain:
        return ResidualUnit(pre, body, None, post)
    sc, is_projection = shortcut_path(cin, cout, stride, opts)
    changes = stride != 1 or cin != cout
    gating = opts.shortcut in ("exclusive_gating", "shortcut_only_gating")
    scales = {}
    if opts.shortcut == "constant_scaling":
        scales = dict(scale_shortcut=opts.scale_shortcut, scale_branch=opts.scale_branch)
    return ResidualUnit(
        pre,
        body,
        sc,
        post,
        shortcut_takes_preact=layout.preact and (first or (changes and is_projection)),
        mode=opts.shortcut,
        gate=Gate(cin, cout, stride) if gating else None,
        **scales,
    )
