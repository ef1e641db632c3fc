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

from torch import nn

from convnets.models.common import DROPOUT_MODES, Stages, check_choice, he_init
from convnets.models.registry import register_model
from convnets.models.resnet_units import (
    UNIT_LAYOUTS,
    UNITS,
    Gate,
    ResidualUnit,
    UnitOptions,
    ZeroPadShortcut,
    conv,
    layers,
    make_unit,
)

__all__ = ["DOWNSAMPLES", "SHORTCUTS", "UNITS", "CifarResNet", "Gate", "ResidualUnit",
           "ZeroPadShortcut", "cifar_resnet"]

SHORTCUTS = (
    "identity",
    "constant_scaling",
    "exclusive_gating",
    "shortcut_only_gating",
    "conv1x1",
    "dropout",
)
DOWNSAMPLES = ("A", "B")
STEM_WIDTH = 16
#: stage output channels, basic (False) and bottleneck (True) units
WIDTHS = {False: (16, 32, 64), True: (64, 128, 256)}


class CifarResNet(Stages):
    """stem -> stage1 -> stage2 -> stage3 -> head, applied in order."""

    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head: nn.Module) -> None:
        stage1, stage2, stage3 = stages
        super().__init__(stem=stem, stage1=stage1, stage2=stage2, stage3=stage3, head=head)


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


def _check_combination(*, plain: bool, unit: str, shortcut: str, downsample: str | None) -> None:
    """Reject option pairs that have no meaning (plain nets have no shortcuts) or that are not
    implemented (the IM Fig. 2 shortcut variants exist for IM Table 1's original unit only)."""
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


def _validate(*, depth: int, num_classes: int, in_channels: int, bottleneck: bool, plain: bool,
              unit: str, shortcut: str, downsample: str | None, shortcut_dropout: float,
              shortcut_dropout_mode: str) -> tuple[int, str]:
    """Check every option of :func:`cifar_resnet`; return (units per stage, downsample)."""
    check_choice("unit", unit, UNITS)
    check_choice("shortcut", shortcut, SHORTCUTS)
    if downsample is not None:
        check_choice("downsample", downsample, DOWNSAMPLES)
    n = _check_depth(depth, bool(bottleneck))
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes={num_classes} and in_channels={in_channels} must be >= 1")
    _check_combination(plain=plain, unit=unit, shortcut=shortcut, downsample=downsample)
    if not 0.0 <= shortcut_dropout <= 1.0:
        raise ValueError(f"shortcut_dropout={shortcut_dropout} must be in [0, 1]")
    check_choice("shortcut_dropout_mode", shortcut_dropout_mode, DROPOUT_MODES)
    if downsample is None:  # the family default, whatever unit= and shortcut= say
        downsample = "B" if bottleneck else "A"
    return n, downsample


def _stem(in_channels: int, spec: str) -> nn.Sequential:
    """The 3x3 stem conv (16 filters) and ``spec`` after it: conv-BN-ReLU for post-activation
    units (He et al. 2015 Sec. 4.2); with pre-activation the first unit's activation follows
    the stem conv before the split, so (e) has a bare conv and (d), whose pre-activation is a
    ReLU alone and whose convs all have their BN, a conv-BN (IM appendix)."""
    mods = [("conv", conv(in_channels, STEM_WIDTH, 3))] + layers(spec, STEM_WIDTH)
    return nn.Sequential(OrderedDict(mods))


def _stages(n: int, opts: UnitOptions) -> list[nn.Sequential]:
    """Three stages of ``n`` units; the first unit of stages 2 and 3 has stride 2."""
    stages, cin, index = [], STEM_WIDTH, 0
    for s, cout in enumerate(WIDTHS[opts.bottleneck]):
        units = []
        for u in range(n):
            index += 1
            stride = 2 if (s > 0 and u == 0) else 1
            units.append(make_unit(cin, cout, stride, opts, first=index == 1, last=index == 3 * n))
            cin = cout
        stages.append(nn.Sequential(*units))
    return stages


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
            9, 18, 200 give 20/32/44/56/110/1202), ``9n+2`` with bottlenecks (164, 1001).
        num_classes: outputs of the final linear layer (10 for CIFAR-10, 100 for CIFAR-100).
        bottleneck: IM appendix units 1x1-3x3-1x1 (width out/4, stride on the first 1x1);
            stage outputs 64/128/256, stem 16 filters.
        plain: He et al. 2015 Fig. 6 plain nets: no shortcuts (unit ``original`` only).
        unit: IM Fig. 4 / Table 2 ordering: ``original`` (a), ``bn_after_add`` (b),
            ``relu_before_add`` (c), ``relu_only_preact`` (d), ``full_preact`` (e); the layers
            of each are the rows of ``resnet_units.UNIT_LAYOUTS`` (module docstring table).
        shortcut: IM Fig. 2 / Table 1 variant (needs ``unit="original"``): ``identity`` (a),
            ``constant_scaling`` (b), ``exclusive_gating`` (c), ``shortcut_only_gating`` (d),
            ``conv1x1`` (e: a 1x1 conv + BN on every shortcut), ``dropout`` (f).
        downsample: shortcut where dimensions change (He et al. 2015 Sec. 3.3): ``"A"``
            (subsampling plus zero channels) or ``"B"`` (1x1 projection, ending like the
            branch: see ``resnet_units.shortcut_path``); ``None``: A for basic units, B for
            bottlenecks (IM appendix). ``shortcut="conv1x1"`` rejects ``"A"``, and
            ``model.config`` records ``"C"`` (He et al. 2015 Sec. 4.1: all projections).
        scale_shortcut: IM Fig. 2(b) factor on the shortcut (``constant_scaling`` only).
        scale_branch: IM Fig. 2(b) factor on the residual branch (``constant_scaling`` only).
        gate_bias: IM Sec. 3.1 initial gate bias b_g (-6 is the paper's best), held in the
            gate's BN shift (``gate.bn.bias``; see :class:`Gate`); gating shortcuts only.
        shortcut_dropout: IM Fig. 2(f) drop probability on the shortcut output (0.5).
        shortcut_dropout_mode: ``"classic"``: a 0/1 mask in training and x(1 - p) at test, the
            reading under which IM Sec. 3.1's "scale with an expectation of 0.5" holds;
            ``"inverted"``: ``nn.Dropout`` (expected scale 1).
        in_channels: input image channels (3 for CIFAR).

    Returns:
        The network, He-initialised (IM appendix / He et al. 2015 Sec. 3.4), gate biases set
        to ``gate_bias`` afterwards.
    """
    n, downsample = _validate(
        depth=depth, num_classes=num_classes, in_channels=in_channels, bottleneck=bottleneck,
        plain=plain, unit=unit, shortcut=shortcut, downsample=downsample,
        shortcut_dropout=shortcut_dropout, shortcut_dropout_mode=shortcut_dropout_mode)
    layout = UNIT_LAYOUTS[unit]
    opts = UnitOptions(layout, bool(bottleneck), bool(plain), shortcut, downsample, scale_shortcut,
                       scale_branch, shortcut_dropout, shortcut_dropout_mode)
    stem = _stem(in_channels, layout.stem)
    stages = _stages(n, opts)
    width = WIDTHS[bool(bottleneck)][-1]
    head = nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1),
                                     fc=nn.Linear(width, num_classes)))
    model = CifarResNet(stem, stages, head)
    # downsample: "C" when every shortcut is a projection, whatever the dimension rule said
    model.config = dict(depth=depth, bottleneck=bool(bottleneck), plain=bool(plain), unit=unit,
                        shortcut=shortcut,
                        downsample="C" if shortcut == "conv1x1" and not plain else downsample)
    he_init(model)
    for m in model.modules():  # IM Sec. 3.1: b_g set after the generic init
        if isinstance(m, Gate):
            m.set_bias(gate_bias)
    return model


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
        option_citations={"unit": _IM, "shortcut": _IM},
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
