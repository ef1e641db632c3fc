"""Initial weights for a fixed seed, pinned bit for bit.

A model built after ``torch.manual_seed(0)`` must come out with the same state dict (names,
order, values, buffers) whatever the builder's internals look like: the order in which modules
are created and initialised decides what each draws from the RNG, so reordering code can change
every run's starting point without changing any count. Each case's SHA-256 over its state dict
was recorded before the model modules were refactored.

Run ``python tests/test_init_fingerprints.py`` to print the table afresh (after a deliberate
change only). The RNG streams are those of the torch release named below; under another release
the test is skipped rather than failed.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from convnets.models import build_model, get_entry

RECORDED_WITH = "2.14.1"

_UNITS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
_SHORTCUTS = ("identity", "constant_scaling", "exclusive_gating", "shortcut_only_gating",
              "conv1x1", "dropout")


def _cases() -> dict[str, tuple[str, dict]]:
    cases: dict[str, tuple[str, dict]] = {}
    for unit in _UNITS:
        for ds in ("A", "B"):
            cases[f"cifar14-{unit}-{ds}"] = ("cifar_resnet", dict(depth=14, unit=unit, downsample=ds))
        cases[f"cifar20-bottleneck-{unit}"] = ("cifar_resnet", dict(depth=20, bottleneck=True, unit=unit))
        cases[f"cifar20-bottleneck-{unit}-A"] = (
            "cifar_resnet", dict(depth=20, bottleneck=True, unit=unit, downsample="A"))
    for sc in _SHORTCUTS:
        cases[f"cifar14-shortcut-{sc}"] = ("cifar_resnet", dict(depth=14, shortcut=sc))
        cases[f"cifar20-bottleneck-shortcut-{sc}"] = (
            "cifar_resnet", dict(depth=20, bottleneck=True, shortcut=sc))
    cases["cifar14-gate_bias-2"] = ("cifar_resnet", dict(depth=14, shortcut="exclusive_gating",
                                                         gate_bias=-2.0))
    cases["plain20"] = ("plain20", {})
    cases["plain14-A"] = ("cifar_resnet", dict(depth=14, plain=True, downsample="A"))
    cases["resnet20"] = ("resnet20", {})
    cases["resnet20-cifar100"] = ("resnet20", dict(num_classes=100))
    for unit in _UNITS + ("preact",):
        for bugs in (False, True):
            cases[f"mnist_resnet-{unit}-bugs{bugs}"] = ("mnist_resnet", dict(unit=unit, seed_bugs=bugs))
    for shared in (False, True):
        cases[f"mnist_inception-shared{shared}"] = ("mnist_inception", dict(shared_1x1=shared))
    cases["densenet_cifar-basic10"] = ("densenet_cifar", dict(depth=10))
    cases["densenet_cifar-bc16"] = ("densenet_cifar", dict(depth=16, bottleneck=True,
                                                           compression=0.5, dropout=0.2))
    cases["densenet40_k12"] = ("densenet40_k12", {})
    cases["densenet121"] = ("densenet121", dict(num_classes=10))
    for init in ("xavier", "he"):
        cases[f"d2l_densenet-{init}"] = ("d2l_densenet", dict(init=init))
        cases[f"d2l_nin-{init}"] = ("d2l_nin", dict(init=init))
    for head in ("gap", "fc"):
        cases[f"nin-{head}"] = ("nin", dict(head=head, width=0.25))
    cases["nin-he"] = ("nin", dict(init="he", width=0.25))
    cases["resnet18"] = ("resnet18", dict(num_classes=10))
    cases["resnet50"] = ("resnet50", dict(num_classes=10))
    return cases


def _randomize_bn(model: torch.nn.Module) -> None:
    """Random BN statistics and affine parameters: a fresh eval-mode BN is (almost) the
    identity and would hide a BN in the wrong place."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)


def fingerprint(name: str, options: dict) -> tuple[str, str, float, float]:
    """(weights, module tree, output |sum|, output weighted sum) of ``name`` built after seed 0.

    weights: SHA-256 (16 hex digits) over the state dict (names, dtypes, shapes, bytes);
    module tree: the same over every module's qualified name, class and ``extra_repr``;
    output: eval-mode logits for a fixed input after the BN layers are randomised.
    """
    torch.manual_seed(0)
    model = build_model(name, **options)
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    tree = hashlib.sha256()
    for qual, m in model.named_modules():
        tree.update(f"{qual}|{type(m).__name__}|{m.extra_repr()}\n".encode())
    _randomize_bn(model)
    c, hgt, wid = get_entry(name).input_size  # ImageNet-sized models run at 96x96 (faster)
    x = torch.randn((2, c, min(hgt, 96), min(wid, 96)), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.eval()(x).double()
    ramp = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float64).view_as(out)
    return (h.hexdigest()[:16], tree.hexdigest()[:16],
            float(out.abs().sum()), float((out * ramp).sum()))


#: case -> (weights hash, module-tree hash, output |sum|, output ramp-weighted sum), recorded
#: before the refactor of the model modules (torch 2.14.1, CPU).
EXPECTED = {
    'cifar14-original-A': ('a138f702e498e68b', 'a2cab9a602c309c3', 73.14594841003418, 2.210993942461515),
    'cifar14-original-B': ('0d0a2b8a79e8b534', '8f8d5b2e88261b49', 103.12010741233826, -15.252638227061217),
    'cifar20-bottleneck-original': ('493971bf6d7acdb6', 'f822d73f5db75a97', 52.37093651294708, -6.21968152021107),
    'cifar20-bottleneck-original-A': ('bcbd14e08f99c6b6', '3acef774d02e2276', 70.55297660827637, -12.3725491573936),
    'cifar14-bn_after_add-A': ('0365d6fad6fc7f96', 'ea597eaaaffa6036', 56.622397661209106, 4.834685601686178),
    'cifar14-bn_after_add-B': ('34813c1e113c9448', 'cc6deabd7c43108f', 140.80410838127136, -23.614304253929543),
    'cifar20-bottleneck-bn_after_add': ('785821613b7a4ed8', '9304c11e22da0f7b', 38.74945694208145, -5.286300731332678),
    'cifar20-bottleneck-bn_after_add-A': ('7c6c1d4dec3f8c8a', '778bb646ba02cadf', 74.77236741781235, -13.753643860942436),
    'cifar14-relu_before_add-A': ('a138f702e498e68b', 'addb12e5f03d899d', 72.7092319726944, 3.200299118694506),
    'cifar14-relu_before_add-B': ('0d0a2b8a79e8b534', '317377c4cd8049b1', 138.78322291374207, -7.796411150380184),
    'cifar20-bottleneck-relu_before_add': ('493971bf6d7acdb6', '29fa374a28f14a44', 63.58768951892853, -8.240389227867126),
    'cifar20-bottleneck-relu_before_add-A': ('bcbd14e08f99c6b6', '4e330ead586cf6bd', 99.41730380058289, -14.48964597049512),
    'cifar14-relu_only_preact-A': ('a138f702e498e68b', 'cb2ad60a8cc8f817', 52.42212426662445, 1.0906716585159284),
    'cifar14-relu_only_preact-B': ('0d0a2b8a79e8b534', 'd98932df3fb45c49', 83.24859023094177, -12.513318877471121),
    'cifar20-bottleneck-relu_only_preact': ('493971bf6d7acdb6', 'a7ccc87267c2a820', 42.9308163523674, -5.246214461954016),
    'cifar20-bottleneck-relu_only_preact-A': ('bcbd14e08f99c6b6', '45351d7def7c734e', 43.00099462270737, -4.624348154193479),
    'cifar14-full_preact-A': ('e3d4e7d8524381b6', '6022480880bf7f83', 39.58084714412689, 3.5577865462554117),
    'cifar14-full_preact-B': ('38574b85ad08ccb6', 'eade038adffd785d', 96.37913650274277, -7.442398369312289),
    'cifar20-bottleneck-full_preact': ('328241267a979fae', 'a5a317f0a3a8f9f3', 23.091688334941864, -2.951914759058702),
    'cifar20-bottleneck-full_preact-A': ('490ca3f221a34782', '6b883f52f153ae57', 52.23535627126694, -6.198164478728648),
    'cifar14-shortcut-identity': ('a138f702e498e68b', 'a2cab9a602c309c3', 73.14594841003418, 2.210993942461515),
    'cifar20-bottleneck-shortcut-identity': ('493971bf6d7acdb6', 'f822d73f5db75a97', 52.37093651294708, -6.21968152021107),
    'cifar14-shortcut-constant_scaling': ('a138f702e498e68b', '4f2404288cff5db4', 2.574841972440481, -0.15223298123792592),
    'cifar20-bottleneck-shortcut-constant_scaling': ('493971bf6d7acdb6', 'c48d0df672d4c369', 3.404711924493313, -0.33294768592244706),
    'cifar14-shortcut-exclusive_gating': ('b1fb588246de24ad', '879ac077ea0e3c63', 2.712446816265583, 0.21993704414681386),
    'cifar20-bottleneck-shortcut-exclusive_gating': ('38be5dfefefb77cb', '33a820baef194439', 2.7279312908649445, 0.12987636029720304),
    'cifar14-shortcut-shortcut_only_gating': ('b1fb588246de24ad', '8e2f94c77676bac8', 9.728221997618675, 2.068407810832324),
    'cifar20-bottleneck-shortcut-shortcut_only_gating': ('38be5dfefefb77cb', '08a75f6d5fcd6674', 6.6596804559230804, 0.31659617549494673),
    'cifar14-shortcut-conv1x1': ('ee25662b50254baa', '13ff8bc20636c087', 59.32218247652054, 7.903419077396393),
    'cifar20-bottleneck-shortcut-conv1x1': ('0c1330ebc7babf56', 'f3b204ffbe367d35', 53.062166422605515, -5.835913926362991),
    'cifar14-shortcut-dropout': ('a138f702e498e68b', '0f1e6192562fe164', 25.40822833776474, 0.20495195451535575),
    'cifar20-bottleneck-shortcut-dropout': ('bac2626acafd48f1', '6a4b5538299ac8dc', 17.66158816218376, -0.43455140371071665),
    'cifar14-gate_bias-2': ('869ddba74f01bc8f', '879ac077ea0e3c63', 2.712446816265583, 0.21993704414681386),
    'plain20': ('14e5fe697cd08cd7', '20ad9e03761a2095', 20.2583759278059, 3.4305927478953406),
    'plain14-A': ('a138f702e498e68b', '18c7ca34e61842f9', 10.418587908148766, -0.08438699417992668),
    'resnet20': ('14e5fe697cd08cd7', '3d1912b7f67fb279', 149.29077887535095, 12.028485385995161),
    'resnet20-cifar100': ('be83abd9c9626e6d', '17254c02a5ea795e', 4386.248011827469, -239.82376296436368),
    'mnist_resnet-original-bugsFalse': ('881225f5fa1fa770', '22b060645a152098', 6.560421787202358, 1.074042974334014),
    'mnist_resnet-original-bugsTrue': ('7c319ff7c5b388d6', '076d522fe6420588', 9.666413834318519, 0.9643645873783447),
    'mnist_resnet-bn_after_add-bugsFalse': ('881225f5fa1fa770', '22b060645a152098', 6.880360892042518, 1.0343005250355133),
    'mnist_resnet-bn_after_add-bugsTrue': ('7c319ff7c5b388d6', '076d522fe6420588', 10.511145249009132, 0.8306688344792315),
    'mnist_resnet-relu_before_add-bugsFalse': ('881225f5fa1fa770', '22b060645a152098', 7.424553560093045, 1.071912709917677),
    'mnist_resnet-relu_before_add-bugsTrue': ('7c319ff7c5b388d6', '076d522fe6420588', 9.257895663380623, 0.631029335291762),
    'mnist_resnet-relu_only_preact-bugsFalse': ('881225f5fa1fa770', '22b060645a152098', 7.085401400923729, 0.9687096751049945),
    'mnist_resnet-relu_only_preact-bugsTrue': ('7c319ff7c5b388d6', '076d522fe6420588', 11.281836910173297, 1.0606236964660256),
    'mnist_resnet-full_preact-bugsFalse': ('881225f5fa1fa770', '22b060645a152098', 5.624329760670662, -0.06635551860457972),
    'mnist_resnet-full_preact-bugsTrue': ('7c319ff7c5b388d6', '076d522fe6420588', 8.39958855509758, 0.4870422592288568),
    'mnist_resnet-preact-bugsFalse': ('881225f5fa1fa770', '22b060645a152098', 5.624329760670662, -0.06635551860457972),
    'mnist_resnet-preact-bugsTrue': ('7c319ff7c5b388d6', '076d522fe6420588', 8.39958855509758, 0.4870422592288568),
    'mnist_inception-sharedFalse': ('e543825ddcc098a0', '5faee1bb60b6b392', 0.7202628352679312, -0.04094377995811794),
    'mnist_inception-sharedTrue': ('3de32af48ba5f440', 'ab6536fd762d43fd', 0.854701160104014, -0.1889191930194532),
    'densenet_cifar-basic10': ('d2ed474bf6c70b25', '2cf4510662b89d3f', 16.25205984711647, -1.8260379386575596),
    'densenet_cifar-bc16': ('329b89d65cf95503', 'cb647bd024bde42b', 138.14157438278198, -18.472688574539987),
    'densenet40_k12': ('9be426d9651458d5', '3befbe835e8cb69e', 177170.27587890625, -13857.38967413651),
    'densenet121': ('352d186d3aea8671', 'c9b69bc33d6728b7', 7400500280.0, 984477863.1578947),
    'd2l_densenet-xavier': ('ca33a42d8cadf8df', 'b869aeb1773467bc', 20.068525463342667, 2.089226159610246),
    'd2l_nin-xavier': ('4b69bfef0875d30f', '2f95a5a7f0b73968', 1.7279938220744953, 0.3298935205369305),
    'd2l_densenet-he': ('73bfa86804c1ca37', 'b869aeb1773467bc', 1035.1824913024902, 60.780866723311604),
    'd2l_nin-he': ('1e2ad00f45f516d5', '2f95a5a7f0b73968', 1.8046933833975345, -0.42262143490983073),
    'nin-gap': ('de3f85e217d5d3a7', '2bb69450cefa961b', 7.49841466181067e-05, 4.367690697349466e-06),
    'nin-fc': ('e989f2e339e1380a', '335f9bebdf832720', 0.0009514063458482269, -0.00019218551173444688),
    'nin-he': ('dc9b70a512207e96', '2bb69450cefa961b', 1.0689411587372888, 0.06226380612842103),
    'resnet18': ('241d97ce7fd85a28', 'f8537068f8887a33', 64.73607349395752, 1.218492269515993),
    'resnet50': ('e728bca2a4824f61', '9f97eac4bf72ff6c', 4841.523780822754, -38.33311101009974),
}


@pytest.mark.skipif(torch.__version__.split("+")[0] != RECORDED_WITH,
                    reason=f"fingerprints recorded with torch {RECORDED_WITH}")
@pytest.mark.parametrize("case", sorted(_cases()))
def test_initial_weights_unchanged(case):
    name, options = _cases()[case]
    weights, tree, out_abs, out_ramp = fingerprint(name, options)
    want = EXPECTED[case]
    assert (weights, tree) == want[:2]
    assert (out_abs, out_ramp) == pytest.approx(want[2:], rel=1e-4, abs=1e-9)


if __name__ == "__main__":
    for case, (name, options) in _cases().items():
        print(f"    {case!r}: {fingerprint(name, options)!r},")
