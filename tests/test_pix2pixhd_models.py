"""pix2pixHD networks, checkpoints and the pix2pixhd render backend.

The state_dict layouts are checked key for key, shape for shape and dtype for dtype against the
layouts of NVIDIA's released models (JSON files: see REFERENCE below), so NVIDIA's
``*_net_G.pth`` files load with ``strict=True``. Everything else runs tiny models (ngf 8) on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from test_sketch import synthetic_face

from storyreel.pix2pixhd.checkpoints import (
    CheckpointError,
    build_from_state_dict,
    generator_options,
    load_generator,
)
from storyreel.pix2pixhd.networks import (
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
)
from storyreel.pix2pixhd.sketch import draw_face_sketch, from_network_output, to_network_input
from storyreel.render import create_backend, render_shard, shard_frames

# Where the layouts are: STORYREEL_REFERENCE_STATE_DICTS, else a copy in tests/data, else the
# shared reference folder of the development machines.
REFERENCE = next(
    (
        Path(folder)
        for folder in (
            os.environ.get("STORYREEL_REFERENCE_STATE_DICTS"),
            Path(__file__).parent / "data" / "nvidia-state-dicts",
            "/work/shared/reference/nvidia-state-dicts",
        )
        if folder and Path(folder).is_dir()
    ),
    Path("/work/shared/reference/nvidia-state-dicts"),
)
# The constructors NVIDIA's layouts were dumped with (see each file's "constructor").
REFERENCE_MODELS = {
    "pix2pixhd_global_ngf64.json": lambda: GlobalGenerator(3, 3, ngf=64),
    "pix2pixhd_local_ngf32.json": lambda: LocalEnhancer(3, 3, ngf=32),
    "pix2pixhd_multiscale_D.json": lambda: MultiscaleDiscriminator(6, get_interm_feat=False),
    "pix2pixhd_multiscale_D_intermfeat.json": lambda: MultiscaleDiscriminator(6),
}
TINY = {"ngf": 8, "n_blocks": 2}
TINY_LOCAL = {"ngf": 8, "n_blocks_global": 2, "n_blocks_local": 1}

needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"no reference state-dict layouts in {REFERENCE}"
)


def reference_layout(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text(encoding="utf-8"))


def layout_of(module: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [
        (key, list(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in module.state_dict().items()
    ]


def meta_state_dict(layout: dict) -> dict[str, torch.Tensor]:
    """NVIDIA's checkpoint as far as keys and shapes go, without allocating its weights."""
    return {
        entry["name"]: torch.empty(
            entry["shape"], dtype=getattr(torch, entry["dtype"]), device="meta"
        )
        for entry in layout["state_dict"]
    }


@needs_reference
@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_state_dict_layout_is_nvidias(name):
    layout = reference_layout(name)
    model = REFERENCE_MODELS[name]()
    expected = [(e["name"], e["shape"], e["dtype"]) for e in layout["state_dict"]]
    assert layout_of(model) == expected
    assert sum(p.numel() for p in model.parameters()) == layout["param_count"]
    # InstanceNorm(affine=False) holds no buffers: the state_dict is the parameters alone.
    assert not list(model.buffers())


@needs_reference
@pytest.mark.parametrize(
    ("name", "kind", "network_class"),
    [
        ("pix2pixhd_global_ngf64.json", "global", GlobalGenerator),
        ("pix2pixhd_local_ngf32.json", "local", LocalEnhancer),
    ],
)
def test_nvidia_generator_layouts_are_recognised_and_load_strictly(name, kind, network_class):
    state = meta_state_dict(reference_layout(name))
    found_kind, options = generator_options(state)
    assert found_kind == kind
    with torch.device("meta"):
        network = network_class(**options)
    network.load_state_dict(state, strict=True, assign=True)
    if kind == "global":
        assert options == dict(input_nc=3, output_nc=3, ngf=64, n_downsampling=4, n_blocks=9)
    else:
        assert options == dict(
            input_nc=3,
            output_nc=3,
            ngf=32,
            n_downsample_global=4,
            n_blocks_global=9,
            n_local_enhancers=1,
            n_blocks_local=3,
        )
    # The label-map variant (label_nc 35 + instance edge: 36 input channels) is read right too.
    variant = reference_layout(name)["input_nc_36_variant"]
    for change in variant["changed_keys"]:
        state[change["name"]] = torch.empty(change["shape_variant"], device="meta")
    assert generator_options(state)[1]["input_nc"] == 36


@pytest.mark.parametrize(
    "make",
    [
        lambda: GlobalGenerator(**TINY),
        lambda: LocalEnhancer(**TINY_LOCAL),
        lambda: NLayerDiscriminator(6, ndf=8),
        lambda: NLayerDiscriminator(6, ndf=8, get_interm_feat=True),
        lambda: MultiscaleDiscriminator(6, ndf=8, get_interm_feat=False),
        lambda: MultiscaleDiscriminator(6, ndf=8),
    ],
    ids=["global", "local", "D", "D-interm", "multiscale-D", "multiscale-D-interm"],
)
def test_save_and_load_round_trip_strictly(make, tmp_path):
    torch.manual_seed(0)
    saved = make()
    torch.save(saved.state_dict(), tmp_path / "net.pth")
    torch.manual_seed(1)
    restored = make()
    restored.load_state_dict(
        torch.load(tmp_path / "net.pth", map_location="cpu", weights_only=True), strict=True
    )
    for (key, a), (key_b, b) in zip(
        saved.state_dict().items(), restored.state_dict().items(), strict=True
    ):
        assert key == key_b and torch.equal(a, b)


def test_tiny_generators_keep_the_frame_shape():
    frames = torch.rand(2, 3, 128, 64) * 2 - 1
    for network in (GlobalGenerator(**TINY), LocalEnhancer(**TINY_LOCAL)):
        with torch.inference_mode():
            out = network.eval()(frames)
        assert out.shape == (2, 3, 128, 64)
        assert out.abs().max() <= 1.0  # tanh output


def test_multiscale_discriminator_outputs_per_scale():
    pair = torch.rand(1, 6, 128, 64)
    with torch.inference_mode():
        interm = MultiscaleDiscriminator(6, ndf=8)(pair)
        final_only = MultiscaleDiscriminator(6, ndf=8, get_interm_feat=False)(pair)
    # Full resolution first; kernel 4 with padding 2 grows each stride-1 map by one pixel.
    assert [list(maps[-1].shape) for maps in interm] == [[1, 1, 19, 11], [1, 1, 11, 7]]
    assert [len(maps) for maps in interm] == [5, 5]
    assert [list(maps[0].shape) for maps in final_only] == [[1, 1, 19, 11], [1, 1, 11, 7]]


def save_tiny(path: Path, network: torch.nn.Module, prefix: str = "") -> Path:
    torch.save({prefix + key: value for key, value in network.state_dict().items()}, path)
    return path


@pytest.mark.parametrize(
    ("network", "prefix"),
    [(GlobalGenerator(**TINY), ""), (LocalEnhancer(**TINY_LOCAL), "module.")],
    ids=["global", "local-dataparallel"],
)
def test_load_generator_infers_the_network(network, prefix, tmp_path):
    path = save_tiny(tmp_path / "latest_net_G.pth", network, prefix)
    loaded = load_generator(path)
    assert type(loaded.generator) is type(network)
    assert not loaded.generator.training
    frames = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        assert torch.allclose(loaded.generator(frames), network.eval()(frames), atol=1e-6)


def tacotron_like_checkpoint() -> dict:
    """A Tacotron 2 training checkpoint's structure and key names (tiny tensors)."""
    layout = reference_layout("tacotron2.json") if REFERENCE.is_dir() else None
    names = (
        [entry["name"] for entry in layout["state_dict"]]
        if layout
        else ["embedding.weight", "encoder.convolutions.0.0.conv.weight", "decoder.prenet.layers"]
    )
    return {
        "iteration": 1000,
        "state_dict": {name: torch.zeros(1) for name in names},
        "optimizer": {},
        "learning_rate": 1e-3,
    }


def test_wrong_files_are_refused_with_what_they_hold(tmp_path):
    generator = GlobalGenerator(**TINY)

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a PyTorch checkpoint"):
        load_generator(tmp_path / "notes.txt")

    with pytest.raises(CheckpointError, match=r"missing\.pth: no such file"):
        load_generator(tmp_path / "missing.pth")

    torch.save(tacotron_like_checkpoint(), tmp_path / "tacotron.pt")
    with pytest.raises(CheckpointError, match=r"tacotron\.pt: a Tacotron 2 checkpoint"):
        load_generator(tmp_path / "tacotron.pt")

    save_tiny(tmp_path / "latest_net_D.pth", MultiscaleDiscriminator(6, ndf=8))
    with pytest.raises(CheckpointError, match=r"a discriminator \(net_D"):
        load_generator(tmp_path / "latest_net_D.pth")

    # A pickled module (as WaveGlow checkpoints are) is not unpickled at all.
    torch.save({"model": generator}, tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_generator(tmp_path / "module.pth")

    state = generator.state_dict()
    del state["model.1.bias"]
    state["model.1.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError) as failure:
        load_generator(tmp_path / "edited.pth")
    message = str(failure.value)
    assert "edited.pth" in message and "GlobalGenerator(" in message
    assert "1 missing keys [model.1.bias]" in message
    assert "1 unexpected keys [model.1.extra]" in message

    state = generator.state_dict()
    state["model.4.weight"] = torch.zeros(16, 8, 5, 5)
    with pytest.raises(CheckpointError, match=r"model\.4\.weight \(16, 8, 5, 5\)"):
        build_from_state_dict(state, label="reshaped.pth")


def test_load_generator_from_gcs(gcs_emulator, monkeypatch, tmp_path):
    from storyreel.storage import storage_client

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    storage_client().create_bucket(bucket)
    network = GlobalGenerator(**TINY)
    path = save_tiny(tmp_path / "net_G.pth", network)
    storage_client().bucket(bucket).blob("presenter/latest_net_G.pth").upload_from_filename(path)

    loaded = load_generator(f"gs://{bucket}/presenter/latest_net_G.pth")
    assert loaded.kind == "global" and loaded.options["ngf"] == 8
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[key], value)
    with pytest.raises(CheckpointError, match=f"gs://{bucket}/absent.pth"):
        load_generator(f"gs://{bucket}/absent.pth")
    with pytest.raises(CheckpointError, match="latest_net_G.pth"):
        load_generator(f"gs://{bucket}/presenter/latest_net_G.pth", max_bytes=1000)


def presenter_and_track(n_frames: int):
    """A non-square presenter with a drawn face, its landmarks and a talking track."""
    reference = synthetic_face(center=(120.0, 120.0), half_width=70.0)
    image = np.full((256, 240, 3), 90, dtype=np.uint8)
    cv2.ellipse(image, (120, 130), (72, 92), 0, 0, 360, (200, 160, 140), -1)
    gaps = 12.0 * (1 + np.sin(np.arange(n_frames) / 2))
    frames = np.stack(
        [synthetic_face(center=(120.0 + k % 3, 120.0), mouth_gap=gap) for k, gap in enumerate(gaps)]
    )
    return image, reference, frames


def write_story_inputs(folder: Path, image, reference, frames):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "presenter.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.savez_compressed(folder / "frames.npz", points=frames.astype(np.float32))
    height, width = image.shape[:2]
    reference_json = {"width": width, "height": height, "points": reference.tolist()}
    return folder / "presenter.png", reference_json, folder / "frames.npz"


def test_backend_writes_the_frames_warp_writes(tmp_path):
    image, reference, frames = presenter_and_track(10)
    presenter_png, reference_json, frames_npz = write_story_inputs(
        tmp_path, image, reference, frames
    )
    checkpoint = save_tiny(tmp_path / "latest_net_G.pth", GlobalGenerator(**TINY))
    outputs = {}
    for backend, options in [
        ("warp", {}),
        ("pix2pixhd", {"checkpoint": str(checkpoint), "size": [96, 112], "batch_size": 4}),
    ]:
        written = []
        for shard in range(2):
            out_dir = tmp_path / backend / f"shard-{shard}"
            count = render_shard(
                backend,
                presenter_png,
                reference_json,
                frames_npz,
                out_dir,
                shard=shard,
                shards=2,
                progress=False,
                **options,
            )
            names = sorted(path.name for path in out_dir.iterdir())
            assert count == len(names)
            assert names == [f"frame-{k:06d}.png" for k in shard_frames(10, shard, 2)]
            written += [out_dir / name for name in names]
        outputs[backend] = written
    assert [p.name for p in outputs["pix2pixhd"]] == [p.name for p in outputs["warp"]]
    for painted, warped in zip(outputs["pix2pixhd"], outputs["warp"], strict=True):
        painted_rgb = cv2.cvtColor(cv2.imread(str(painted)), cv2.COLOR_BGR2RGB)
        assert painted_rgb.shape == cv2.imread(str(warped)).shape == (256, 240, 3)
        # 96x112 is narrower than the 240x256 frame: the generated image fills the centred box
        # (10, 0, 219, 256) and the portrait shows unchanged on either side.
        assert np.array_equal(painted_rgb[:, :10], image[:, :10])
        assert np.array_equal(painted_rgb[:, 229:], image[:, 229:])
        assert not np.array_equal(painted_rgb[:, 10:229], image[:, 10:229])


def test_backend_frame_is_the_generator_output_for_the_sketch(tmp_path):
    image, reference, frames = presenter_and_track(3)
    torch.manual_seed(0)
    network = GlobalGenerator(**TINY).eval()
    checkpoint = save_tiny(tmp_path / "latest_net_G.pth", network)
    # The options exactly as config.yaml's render.pix2pixhd gives them; size null: the
    # presenter's 240x256 is already a multiple of 16.
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    options = {**config["render"]["pix2pixhd"], "checkpoint": str(checkpoint), "batch_size": 2}
    backend = create_backend("pix2pixhd", image, reference, **options)
    assert backend.size == (240, 256)
    rendered = backend.render_batch(frames)
    assert rendered.shape == (3, 256, 240, 3) and rendered.dtype == np.uint8
    sketch = draw_face_sketch(frames[2], (240, 256))
    with torch.inference_mode():
        expected = from_network_output(network(torch.from_numpy(to_network_input(sketch))).numpy())
    assert np.abs(rendered[2].astype(int) - expected[0]).max() <= 1
    assert np.array_equal(backend.render(frames[2]), rendered[2])
    # Different mouths, different frames.
    assert not np.array_equal(rendered[0], rendered[1])


def test_backend_options_are_checked(tmp_path):
    image, reference, _ = presenter_and_track(1)
    with pytest.raises(ValueError, match=r"render\.pix2pixhd\.checkpoint"):
        create_backend("pix2pixhd", image, reference)
    with pytest.raises(ValueError, match="precision"):
        create_backend("pix2pixhd", image, reference, checkpoint="x.pth", precision="fp8")
    checkpoint = save_tiny(tmp_path / "latest_net_G.pth", GlobalGenerator(**TINY))
    with pytest.raises(ValueError, match=r"multiples of 16"):
        create_backend("pix2pixhd", image, reference, checkpoint=str(checkpoint), size=[100, 96])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            create_backend("pix2pixhd", image, reference, checkpoint=str(checkpoint), device="cuda")
    with pytest.raises(ValueError, match="unknown options"):
        create_backend("pix2pixhd", image, reference, checkpoint=str(checkpoint), colour=1)


def test_default_render_path_does_not_import_torch():
    code = (
        "import sys, storyreel.render, storyreel.render.warp, storyreel.pix2pixhd.sketch;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
