"""CIFAR ResNets: He et al. 2015 (Deep Residual Learning, Sec. 4.2) and the ablations of
He et al. 2016 (Identity Mappings in Deep Residual Networks, "IM").

One builder, :func:`cifar_resnet`, covers

* the Sec. 4.2 networks: a 3x3 stem conv with 16 filters, three stages of ``n`` two-conv
  units with 16/32/64 filters on 32x32/16x16/8x8 maps, global average pooling and a linear
  classifier, ``6n+2`` weight layers in all; residual or ``plain`` (no shortcuts at all);
* IM's bottleneck networks (ResNet-164/1001): units 1x1 (out/4) - 3x3 (out/4) - 1x1 (out),
  stage outputs 64/128/256, a 16-filter stem, ``9n+2`` weight layers;
* the orderings of IM Fig. 4 / Table 2 (``unit=``) and the shortcut variants of IM Fig. 2 /
  Table 1 (``shortcut=``).

Layout of the module tree (``python -m convnets info`` prints one row per top-level child):
``stem`` -> ``stage1`` -> ``stage2`` -> ``stage3`` -> ``head`` (pool, flatten, fc). Each stage
is an ``nn.Sequential`` of :class:`ResidualUnit`; a unit holds ``pre`` (its pre-activation,
empty for post-activation units), ``branch`` (the residual function F), ``shortcut``
(``None`` in plain nets), an optional ``gate`` and ``post`` (what follows the addition).

Stem and head per ``unit`` (the pre-activation cases follow IM's appendix):

=====================  ==================  ===================================  ==============
unit                   stem                last unit after its addition          head
=====================  ==================  ===================================  ==============
original (a)           conv-BN-ReLU        ReLU (as every unit)                  pool-fc
bn_after_add (b)       conv-BN-ReLU        BN-ReLU (as every unit)               pool-fc
relu_before_add (c)    conv-BN-ReLU        nothing (as every unit)               pool-fc
relu_only_preact (d)   conv-BN             extra ReLU                            pool-fc
full_preact (e)        conv                extra BN-ReLU                         pool-fc
=====================  ==================  ===================================  ==============
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from convnets.models.common import DROPOUT_MODES, Stages, check_choice, he_init, make_dropout
from convnets.models.registry import register_model

UNITS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
PREACT_UNITS = ("relu_only_preact", "full_preact")
SHORTCUTS = (
    "identity",
    "constant_scaling",
    "exclusive_gating",
    "shortcut_only_gating",
    "conv1x1",
    "dropout",
)
DOWNSAMPLES = ("A", "B")


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    # Every conv is followed (or, in pre-activation units, preceded) by BN: no conv bias.
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


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
        self.conv = _conv(in_channels, out_channels, 1, stride)
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
    pre-activated input (only differs for pre-activation units; see :func:`cifar_resnet`).
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


class CifarResNet(Stages):
    """stem -> stage1 -> stage2 -> stage3 -> head, applied in order."""

    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head: nn.Module) -> None:
        stage1, stage2, stage3 = stages
        super().__init__(stem=stem, stage1=stage1, stage2=stage2, stage3=stage3, head=head)


def _branch(unit: str, convs: list[tuple[int, int, int, int]]) -> nn.Sequential:
    """The residual function F for ``unit``; ``convs`` lists (cin, cout, kernel, stride).

    (a) conv-BN-ReLU-...-conv-BN          (b) conv-BN-ReLU-...-conv (its BN moves after add)
    (c) conv-BN-ReLU-...-conv-BN-ReLU     (d) conv-BN-ReLU-...-conv-BN (its first ReLU is ``pre``)
    (e) conv-BN-ReLU-...-conv (its first BN-ReLU is ``pre``)
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    last = len(convs)
    for i, (cin, cout, k, stride) in enumerate(convs, start=1):
        if unit == "full_preact" and i > 1:
            layers[f"bn{i - 1}"] = nn.BatchNorm2d(cin)
            layers[f"relu{i - 1}"] = nn.ReLU(inplace=True)
        elif unit == "relu_only_preact" and i > 1:
            layers[f"relu{i - 1}"] = nn.ReLU(inplace=True)
        layers[f"conv{i}"] = _conv(cin, cout, k, stride)
        if unit in ("original", "relu_before_add", "relu_only_preact") or (
            unit == "bn_after_add" and i < last
        ):
            layers[f"bn{i}"] = nn.BatchNorm2d(cout)
        if unit in ("original", "bn_after_add") and i < last:
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
        if unit == "relu_before_add":
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def _seq(**mods: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(mods))


def _check_depth(depth: int, bottleneck: bool) -> int:
    """Units per stage for ``depth`` (6n+2 with basic units, 9n+2 with bottlenecks)."""
    per_unit = 9 if bottleneck else 6
    rule = f"{per_unit}n+2"
    kind = "bottleneck" if bottleneck else "basic"
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(f"depth={depth!r} must be an integer of the form {rule}")
    if depth < per_unit + 2 or (depth - 2) % per_unit:
        raise ValueError(
            f"depth={depth} is not {rule} with n >= 1 (the rule for {kind} units: "
            f"{per_unit // 3} weight layers per unit, 3 stages, plus stem and classifier)"
        )
    return (depth - 2) // per_unit


def cifar_resnet(
    *,
    depth: int = 20,
    num_classes: int = 10,
    bottleneck: bool = False,
    plain: bool = False,
    unit: str = "original",
    shortcut: str = "identity",
    downsample: str | None = None,
    scale_shortcut: float = 0.5,
    scale_branch: float = 0.5,
    gate_bias: float = -6.0,
    shortcut_dropout: float = 0.5,
    shortcut_dropout_mode: str = "classic",
    in_channels: int = 3,
) -> CifarResNet:
    """CIFAR ResNet of He et al. 2015 Sec. 4.2, with the ablations of IM (He et al. 2016).

    Args:
        depth: weight layers; ``6n+2`` with basic units (He et al. 2015 Sec. 4.2: n = 3, 5, 7,
            9, 18, 200 give 20/32/44/56/110/1202), ``9n+2`` with bottlenecks (IM Sec. 4 and
            appendix: 164, 1001).
        num_classes: outputs of the final linear layer (10 for CIFAR-10, 100 for CIFAR-100).
        bottleneck: IM appendix bottleneck units 1x1-3x3-1x1 with bottleneck width out/4;
            stage outputs 64/128/256, stem 16 filters. The stride-2 of a downsampling unit sits
            on its first 1x1 conv, as in the authors' Torch release (resnet-1k-layers).
        plain: He et al. 2015 Sec. 4.2 / Fig. 6 plain nets: the same layers without any
            shortcut. Needs ``unit="original"`` and ``shortcut="identity"``.
        unit: IM Fig. 4 / Table 2 ordering of BN, ReLU and addition: ``original`` (a),
            ``bn_after_add`` (b), ``relu_before_add`` (c), ``relu_only_preact`` (d),
            ``full_preact`` (e). Pre-activation units (d, e) follow the IM appendix: the
            first unit's activation comes right after the stem conv, before the split; the
            last unit gets an extra activation after its addition; a projection shortcut in a
            dimension-increasing unit reads the pre-activated input, an option-A shortcut the
            raw input. Our choices for (d), which IM leaves open: the stem is conv-BN (every
            (d) conv has its BN; the first unit's ReLU then acts before the split), the last
            unit's extra activation is a ReLU alone (the pre-activation of a (d) unit), and
            projections are conv-BN. For (e): bare-conv stem, extra BN-ReLU, bare-conv
            projections (IM authors' release). See the table in the module docstring.
        shortcut: IM Fig. 2 / Table 1 shortcut variant: ``identity`` (a), ``constant_scaling``
            (b), ``exclusive_gating`` (c), ``shortcut_only_gating`` (d), ``conv1x1`` (e: a
            1x1 conv + BN on every shortcut), ``dropout`` (f: dropout on the shortcut
            output). Variants other than ``identity`` need ``unit="original"`` (the unit of
            IM Table 1); basic and bottleneck units both work.
        downsample: shortcut where dimensions change (He et al. 2015 Sec. 3.3 / 4.2):
            ``"A"`` (stride-2 subsampling plus zero channels, no parameters) or ``"B"`` (1x1
            conv projection, stride 2, or stride 1 in the 16->64 first bottleneck unit). A
            projection ends like the residual branch: conv-BN for units (a), (c), (d), a bare
            conv for (b) and (e), whose branches end in a conv.
            ``None`` takes the family default: A for basic units (He et al. 2015 Sec. 4.2),
            B for bottleneck units (IM appendix). It does not change with ``unit`` or
            ``shortcut``, except that ``shortcut="conv1x1"`` already puts a 1x1 projection
            on every shortcut (so ``"A"`` is rejected there, and ``model.config`` records
            ``"C"``, He et al. 2015 Sec. 4.1's "all shortcuts are projections").
        scale_shortcut: IM Fig. 2(b) factor on the shortcut (``constant_scaling`` only).
        scale_branch: IM Fig. 2(b) factor on the residual branch (``constant_scaling`` only).
        gate_bias: IM Sec. 3.1 initial gate bias b_g (-6 is the paper's best); used by the
            gating shortcuts only. b_g lives in the BN shift of the gate (``gate.bn.bias``;
            IM writes sigma(W_g x + b_g)); see :class:`Gate`.
        shortcut_dropout: IM Fig. 2(f) drop probability on the shortcut output (``dropout``
            only; the paper uses 0.5).
        shortcut_dropout_mode: ``"classic"`` (default): a 0/1 mask in training and x(1 - p) at
            test, the reading under which IM Sec. 3.1's argument holds (dropout "imposes a
            scale with an expectation of 0.5" on the shortcut); ``"inverted"``: ``nn.Dropout``
            (x/(1 - p) in training, identity at test), whose expected scale is 1.
        in_channels: input image channels (3 for CIFAR).

    Returns:
        The network, He-initialised (IM appendix / He et al. 2015 Sec. 3.4), gate biases set
        to ``gate_bias`` afterwards.
    """
    check_choice("unit", unit, UNITS)
    check_choice("shortcut", shortcut, SHORTCUTS)
    if downsample is not None:
        check_choice("downsample", downsample, DOWNSAMPLES)
    n = _check_depth(depth, bool(bottleneck))
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes={num_classes} and in_channels={in_channels} must be >= 1")
    if plain and unit != "original":
        raise ValueError(f"plain=True needs unit='original', got unit={unit!r}")
    if plain and shortcut != "identity":
        raise ValueError(f"plain=True has no shortcuts, so shortcut={shortcut!r} is not supported")
    if plain and downsample == "B":
        raise ValueError("plain=True has no shortcuts, so downsample='B' is not supported")
    if shortcut != "identity" and unit != "original":
        raise ValueError(
            f"shortcut={shortcut!r} with unit={unit!r} is not supported: the IM Fig. 2 "
            f"shortcut variants are implemented for unit='original' (IM Table 1) only"
        )
    if shortcut == "conv1x1" and downsample == "A":
        raise ValueError(
            "shortcut='conv1x1' with downsample='A' is not supported: conv1x1 puts a 1x1 "
            "projection on every shortcut, including where dimensions change"
        )
    if not 0.0 <= shortcut_dropout <= 1.0:
        raise ValueError(f"shortcut_dropout={shortcut_dropout} must be in [0, 1]")
    check_choice("shortcut_dropout_mode", shortcut_dropout_mode, DROPOUT_MODES)
    if downsample is None:
        downsample = "B" if bottleneck else "A"

    stem_width = 16
    if bottleneck:
        widths = (64, 128, 256)
    else:
        widths = (16, 32, 64)

    # Stem. Post-activation units (a, b, c): conv-BN-ReLU (He et al. 2015 Sec. 4.2).
    # IM appendix: with pre-activation the first unit's activation is applied right after
    # conv1, before the split, so it belongs to that unit (see `first` below). For (e) the
    # stem is the bare conv. For (d) the stem is conv-BN: a (d) unit's pre-activation is a
    # ReLU alone and every (d) conv is followed by its BN, so the stem conv keeps its BN and
    # the first unit's ReLU then acts before the split.
    if unit == "full_preact":
        stem = _seq(conv=_conv(in_channels, stem_width, 3))
    elif unit == "relu_only_preact":
        stem = _seq(conv=_conv(in_channels, stem_width, 3), bn=nn.BatchNorm2d(stem_width))
    else:
        stem = _seq(
            conv=_conv(in_channels, stem_width, 3),
            bn=nn.BatchNorm2d(stem_width),
            relu=nn.ReLU(inplace=True),
        )

    stages: list[nn.Sequential] = []
    cin = stem_width
    total_units = 3 * n
    index = 0
    for s, cout in enumerate(widths):
        units = []
        for u in range(n):
            index += 1
            stride = 2 if (s > 0 and u == 0) else 1
            first, last = index == 1, index == total_units
            units.append(
                _make_unit(
                    cin,
                    cout,
                    stride,
                    unit=unit,
                    bottleneck=bool(bottleneck),
                    plain=bool(plain),
                    shortcut=shortcut,
                    downsample=downsample,
                    first=first,
                    last=last,
                    scale_shortcut=scale_shortcut,
                    scale_branch=scale_branch,
                    shortcut_dropout=shortcut_dropout,
                    shortcut_dropout_mode=shortcut_dropout_mode,
                )
            )
            cin = cout
        stages.append(nn.Sequential(*units))

    head = _seq(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=nn.Linear(cin, num_classes))
    model = CifarResNet(stem, stages, head)
    model.config = dict(
        depth=depth,
        bottleneck=bool(bottleneck),
        plain=bool(plain),
        unit=unit,
        shortcut=shortcut,
        # what the shortcuts are: "C" when every one is a projection (shortcut="conv1x1"),
        # whatever the dimension-changing rule would have been
        downsample="C" if shortcut == "conv1x1" and not plain else downsample,
    )
    he_init(model)
    for m in model.modules():  # IM Sec. 3.1: b_g set after the generic init
        if isinstance(m, Gate):
            m.set_bias(gate_bias)
    return model


def _make_unit(
    cin: int,
    cout: int,
    stride: int,
    *,
    unit: str,
    bottleneck: bool,
    plain: bool,
    shortcut: str,
    downsample: str,
    first: bool,
    last: bool,
    scale_shortcut: float,
    scale_branch: float,
    shortcut_dropout: float,
    shortcut_dropout_mode: str = "classic",
) -> ResidualUnit:
    if bottleneck:
        mid = cout // 4
        # stride on the first 1x1, as in the IM authors' release (resnet-1k-layers)
        convs = [(cin, mid, 1, stride), (mid, mid, 3, 1), (mid, cout, 1, 1)]
    else:
        convs = [(cin, cout, 3, stride), (cout, cout, 3, 1)]
    branch = _branch(unit, convs)

    # Pre-activation (empty for a, b, c).
    if unit == "full_preact":
        pre = _seq(bn=nn.BatchNorm2d(cin), relu=nn.ReLU())
    elif unit == "relu_only_preact":
        pre = _seq(relu=nn.ReLU())
    else:
        pre = nn.Sequential()

    # After the addition.
    if unit == "original":
        post = _seq(relu=nn.ReLU(inplace=True))
    elif unit == "bn_after_add":
        post = _seq(bn=nn.BatchNorm2d(cout), relu=nn.ReLU(inplace=True))
    elif unit == "full_preact" and last:
        # IM appendix: the last unit gets an extra BN-ReLU after its addition (before pooling)
        post = _seq(bn=nn.BatchNorm2d(cout), relu=nn.ReLU(inplace=True))
    elif unit == "relu_only_preact" and last:
        # IM appendix, applied to (d): the extra activation after the last addition is the
        # pre-activation the next unit would have applied, i.e. a ReLU alone (the sum is made
        # of BN outputs, like the input every other (d) unit's ReLU sees).
        post = _seq(relu=nn.ReLU(inplace=True))
    else:  # (c) and non-last (d), (e): nothing after the addition
        post = nn.Sequential()

    if plain:
        return ResidualUnit(pre, branch, None, post)

    changes = stride != 1 or cin != cout
    # A projection's own BN: a projection ends like the residual branch it is added to, so
    # that both summands are on the same footing. Branches of (a), (c), (d) end with BN, so
    # their projections are conv-BN (He et al. 2015 option B); branches of (b) and (e) end
    # with a bare conv (in (b) the BN after the addition normalises both summands; in (e) the
    # next unit's pre-activation BN does), so their projections are a bare 1x1 conv, as in the
    # IM authors' release for (e).
    proj_bn = unit not in ("bn_after_add", "full_preact")

    def projection() -> nn.Sequential:
        layers = OrderedDict(conv=_conv(cin, cout, 1, stride))
        if proj_bn:
            layers["bn"] = nn.BatchNorm2d(cout)
        return nn.Sequential(layers)

    is_projection = shortcut == "conv1x1" or (changes and downsample == "B")
    if is_projection:
        sc: nn.Module = projection()
    elif changes:
        sc = ZeroPadShortcut(cin, cout, stride)
    else:
        sc = nn.Identity()
    if shortcut == "dropout":
        # IM Fig. 2(f): dropout on the shortcut's output
        sc = _seq(path=sc, dropout=make_dropout(shortcut_dropout, shortcut_dropout_mode))

    # IM appendix: which input the shortcut reads in a pre-activation unit.
    #  * first unit of the net: its activation comes before the split, so the shortcut
    #    (identity, or in the bottleneck 16->64 unit the projection / zero padding) reads the
    #    pre-activated input;
    #  * dimension-increasing unit with a projection ("B"): the projection is pre-activated too;
    #  * option A shortcut in a dimension-increasing unit: subsamples and pads the raw input,
    #    like an identity shortcut (it has no weight layer to pre-activate);
    #  * every other unit: identity on the raw input.
    takes_preact = unit in PREACT_UNITS and (first or (changes and is_projection))

    gate = None
    if shortcut in ("exclusive_gating", "shortcut_only_gating"):
        gate = Gate(cin, cout, stride)
    if shortcut == "constant_scaling":
        scales = dict(scale_shortcut=scale_shortcut, scale_branch=scale_branch)
    else:
        scales = {}
    return ResidualUnit(
        pre,
        branch,
        sc,
        post,
        shortcut_takes_preact=takes_preact,
        mode=shortcut,
        gate=gate,
        **scales,
    )


# --------------------------------------------------------------------------- registration
_FAMILY = "cifar-resnet"
_INPUT = (3, 32, 32)
_RN = "He et al. 2015, Sec. 4.2"
_IM = "He et al. 2016 (Identity Mappings), Sec. 4 and appendix"

for _depth in (20, 32, 44, 56, 110, 1202):
    register_model(
        f"resnet{_depth}",
        cifar_resnet,
        family=_FAMILY,
        input_size=_INPUT,
        citation=_RN + ", Table 6",
        description=f"{_depth}-layer CIFAR ResNet, basic units (option A shortcuts by default)",
        tags={"heavy"} if _depth == 1202 else set(),
        depth=_depth,
    )
for _depth in (20, 32, 44, 56, 110):
    register_model(
        f"plain{_depth}",
        cifar_resnet,
        family=_FAMILY,
        input_size=_INPUT,
        citation=_RN + ", Fig. 6",
        description=f"{_depth}-layer plain CIFAR net: resnet{_depth}'s layers, no shortcuts",
        depth=_depth,
        plain=True,
    )
for _depth in (164, 1001):
    register_model(
        f"resnet{_depth}",
        cifar_resnet,
        family=_FAMILY,
        input_size=_INPUT,
        citation=_IM,
        description=(
            f"{_depth}-layer CIFAR ResNet with bottleneck units (projection shortcuts by "
            f"default); unit='full_preact' gives IM's pre-activation ResNet-{_depth}"
        ),
        tags={"heavy"} if _depth == 1001 else set(),
        depth=_depth,
        bottleneck=True,
    )
register_model(
    "cifar_resnet",
    cifar_resnet,
    family=_FAMILY,
    input_size=_INPUT,
    citation=f"{_RN}; {_IM}",
    description="generic CIFAR ResNet: every depth/unit/shortcut option open (depth 20 default)",
)
