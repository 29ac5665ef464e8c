"""The default model set: tiny, seeded, real architectures in the real layout.

No weights can be downloaded where this project is built and tested, so the default set is a
small SDXL of the same classes and file layout as stabilityai/stable-diffusion-xl-base-1.0,
with seeded random weights. Everything downstream (loading, tokenizing, Triton models) runs the
code a real checkpoint runs. The tokenizers are the real CLIP BPE (vocabulary shipped in the
open-clip-torch wheel), so prompts tokenize exactly as with real SDXL.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch

SEED = 20240501
CLIP_VOCAB_SIZE = 49408
TE1_HIDDEN, TE2_HIDDEN = 32, 64  # real SDXL: 768 (CLIP ViT-L), 1280 (OpenCLIP bigG)
TIME_EMBED_DIM = 8  # real: 256; projection input = 6 * 8 + pooled 64 = 112 (real: 2816)

SDXL_SCHEDULER_CONFIG = dict(  # stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon",
    use_karras_sigmas=False, sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False,
)


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file inside the installed open-clip-torch wheel (not imported: it needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise RuntimeError("open-clip-torch is not installed; `make install` installs it (--no-deps)")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer(out: Path, pad_token: str) -> None:
    """Write vocab.json/merges.txt in CLIP's layout: 256 bytes, 256 '</w>' bytes, 48894 merges, 2 specials."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : CLIP_VOCAB_SIZE - 256 * 2 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token=pad_token,
                            model_max_length=77)
        tok.save_pretrained(out)


def tiny_sdxl_components(seed: int = SEED) -> dict:
    """Seeded components of SDXL's architecture at toy width (the UNet keeps SDXL's 3-level text-time design)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(hidden: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 4,
                              num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                              projection_dim=hidden, hidden_act=act, bos_token_id=0, eos_token_id=2, pad_token_id=1)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN, use_linear_projection=True, norm_num_groups=16,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TE2_HIDDEN,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32), norm_num_groups=8, scaling_factor=0.13025, force_upcast=True,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(TE1_HIDDEN, "quick_gelu"))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(TE2_HIDDEN, "gelu"))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG))


def build_tiny_sdxl(out: Path, seed: int = SEED) -> Path:
    """Write the tiny SDXL checkpoint to `out` (diffusers layout, safetensors) atomically."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".sdxl-", dir=out.parent if out.parent.exists() else None))
    try:
        write_clip_tokenizer(tmp / "_tok1", pad_token="<|endoftext|>")  # as SDXL's tokenizer/
        write_clip_tokenizer(tmp / "_tok2", pad_token="!")  # as SDXL's tokenizer_2/
        pipe = StableDiffusionXLPipeline(
            **tiny_sdxl_components(seed),
            tokenizer=CLIPTokenizer.from_pretrained(tmp / "_tok1"),
            tokenizer_2=CLIPTokenizer.from_pretrained(tmp / "_tok2"),
            force_zeros_for_empty_prompt=True,
        )
        pipe.save_pretrained(tmp / "sdxl", safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "sdxl").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny_model_set(models_dir: Path, seed: int = SEED, force: bool = False) -> Path:
    """Build every part of the default set that is missing under `models_dir`."""
    models_dir = Path(models_dir)
    if force or not (models_dir / "sdxl" / "model_index.json").exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        build_tiny_sdxl(models_dir / "sdxl", seed)
    if force or not (models_dir / "insightface_tiny" / "2d106det.onnx").exists():
        build_tiny_insightface(models_dir / "insightface_tiny", seed)
    if force or not (models_dir / "insightface" / "w600k_r50.onnx").exists():
        build_tiny_arcface(models_dir / "insightface", seed)
    if force or not (models_dir / "photomaker" / "photomaker-v2.bin").exists():
        build_tiny_photomaker(models_dir / "photomaker", models_dir / "sdxl", seed)
    return models_dir


def tiny_id_encoder_config():
    """PhotoMaker V2's ID encoder structure at toy width; the cross-attention dim is the tiny SDXL's text width."""
    from portrait.models.identity import IdEncoderConfig

    return IdEncoderConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                           patch_size=14, image_size=224, projection_dim=16, projection_2_dim=24, id_embeddings_dim=512,
                           cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN, num_tokens=2, token_ratio=4, resampler_depth=4,
                           resampler_dim_head=32, resampler_ff_mult=4)


def photomaker_lora_for(unet, rank: int = 4, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded LoRA on every attention projection (to_q/k/v/out) of `unet`, in the attention-processor key format
    of diffusers-trained LoRAs (`unet.<path>.processor.to_q_lora.down.weight`), which diffusers' loader converts."""
    from diffusers.models.attention_processor import Attention

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for path, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        for name, linear in (("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v), ("to_out", module.to_out[0])):
            key = f"unet.{path}.processor.{name}_lora"
            state[f"{key}.down.weight"] = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features ** 0.5
            state[f"{key}.up.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.2 / rank ** 0.5
    return state


def build_tiny_photomaker(out: Path, sdxl_dir: Path, seed: int = SEED) -> Path:
    """photomaker-v2.bin as PhotoMaker ships it ({"id_encoder": ..., "lora_weights": ...}) for the tiny SDXL,
    plus id_encoder_config.json with the toy dimensions (absent for real weights: V2's are the defaults)."""
    from diffusers import UNet2DConditionModel

    from portrait.models.identity import PhotoMakerIdEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_id_encoder_config()
    torch.manual_seed(seed + 20)
    encoder = PhotoMakerIdEncoder(config)
    unet = UNet2DConditionModel.from_pretrained(sdxl_dir, subfolder="unet")
    state = {"id_encoder": encoder.state_dict(), "lora_weights": photomaker_lora_for(unet, seed=seed + 21)}
    tmp = out / ".photomaker-v2.bin.tmp"
    torch.save(state, tmp)
    config.write(out)
    tmp.replace(out / "photomaker-v2.bin")
    return out


class TinyArcFace(torch.nn.Module):
    """w600k_r50's interface: aligned 112x112 BGR face, normalised (x - 127.5) / 127.5 -> [N, 512] raw embedding."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.fc = torch.nn.Linear(16 * 14 * 14, 512)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1)) * 10.0  # raw ArcFace embeddings have norms ~20


def build_tiny_arcface(out: Path, seed: int = SEED) -> Path:
    """Seeded w600k_r50-shaped recognition ONNX ([N, 3, 112, 112] -> [N, 512]) that insightface's model_zoo routes to
    ArcFaceONNX like the real one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 12)
    tmp = out / ".w600k_r50.onnx.tmp"
    torch.onnx.export(TinyArcFace().eval(), (torch.zeros(1, 3, 112, 112),), str(tmp), dynamo=False,
                      input_names=["input.1"], output_names=["embedding"], opset_version=17,
                      dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    tmp.replace(out / "w600k_r50.onnx")
    return out


class TinySCRFD(torch.nn.Module):
    """SCRFD's interface at toy size: strides 8/16/32, 2 anchors, outputs scores | boxes | keypoints per stride
    as 2-D [rows, C] tensors (rows ordered y, x, anchor), as buffalo_l's det_10g.onnx."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(8, 2 * (1 + 4 + 10), 1) for _ in range(3))

    def forward(self, x):
        feats = torch.relu(self.stem(x))
        scores, boxes, kps = [], [], []
        for stride, head in zip((8, 16, 32), self.heads):
            out = head(torch.nn.functional.avg_pool2d(feats, stride)).permute(0, 2, 3, 1)  # [1, h, w, 30]
            scores.append(torch.sigmoid(out[..., :2] - 0.5).reshape(-1, 1))
            boxes.append(torch.relu(out[..., 2:10]).reshape(-1, 4) + 0.5)
            kps.append(out[..., 10:30].reshape(-1, 10))
        return (*scores, *boxes, *kps)


class TinyLandmark106(torch.nn.Module):
    """2d106det's interface: a 192x192 face crop -> [1, 212] (106 points in [-1, 1] of the crop)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.fc = torch.nn.Linear(4 * 24 * 24, 212)

    def forward(self, x):
        return torch.tanh(self.fc(torch.relu(self.conv(x)).flatten(1)))


def build_tiny_insightface(out: Path, seed: int = SEED) -> Path:
    """Seeded SCRFD- and 2d106-shaped ONNX (det_10g.onnx, 2d106det.onnx) that insightface's model_zoo routes and
    decodes like the real buffalo_l files; they find nothing meaningful. Kept out of `insightface/` so the default
    set keeps its real (Haar) detector; tests point the InsightFace detector here."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 10)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    torch.onnx.export(TinySCRFD().eval(), (torch.zeros(1, 3, 640, 640),), str(out / "det_10g.onnx"), dynamo=False,
                      input_names=["input.1"], output_names=names, opset_version=17,
                      dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {0: "rows"} for n in names}})
    torch.manual_seed(seed + 11)
    torch.onnx.export(TinyLandmark106().eval(), (torch.zeros(1, 3, 192, 192),), str(out / "2d106det.onnx"), dynamo=False,
                      input_names=["data"], output_names=["fc1"], opset_version=17)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The full-size set: SDXL base 1.0 and PhotoMaker V2 at their published dimensions, seeded random weights.
#
# Nothing trained can be downloaded here, but everything a real checkpoint exercises through its dimensions
# (loading, memory, the UNet's 2.6 B parameters, the LoRA at SDXL's module names, ONNX shapes) can be. The
# values below are those of the published config.json files of stabilityai/stable-diffusion-xl-base-1.0
# (unet/, vae/, text_encoder/, text_encoder_2/, model_index.json), written out rather than downloaded.

FULL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    mid_block_scale_factor=1, mid_block_type="UNetMidBlock2DCrossAttn",
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280], attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048, use_linear_projection=True, upcast_attention=None, dual_cross_attention=False,
    only_cross_attention=False, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, resnet_time_scale_shift="default",
    time_embedding_type="positional", conv_in_kernel=3, conv_out_kernel=3,
)
FULL_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, layers_per_block=2, act_fn="silu",
    norm_num_groups=32, block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.13025, force_upcast=True,
)
_CLIP_TEXT_COMMON = dict(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77, layer_norm_eps=1e-5, attention_dropout=0.0,
                         dropout=0.0, initializer_factor=1.0, initializer_range=0.02, bos_token_id=0, eos_token_id=2,
                         pad_token_id=1)
FULL_TEXT_ENCODER_CONFIG = dict(  # OpenAI CLIP ViT-L/14's text tower
    _CLIP_TEXT_COMMON, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    projection_dim=768, hidden_act="quick_gelu")
FULL_TEXT_ENCODER_2_CONFIG = dict(  # OpenCLIP ViT-bigG/14's text tower with its 1280 projection
    _CLIP_TEXT_COMMON, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
    projection_dim=1280, hidden_act="gelu")
FULL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True, "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# PhotoMaker V2's model card: "lora_weights applies to all attention layers in the UNet, and the rank is set to 64"
PHOTOMAKER_LORA_RANK = 64
# published parameter counts, checked by tests/unit/test_full_size.py on `meta` models (no weights)
FULL_PARAMETER_COUNTS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                         "text_encoder_2": 694_659_840}


def full_sdxl_modules(device: str = "meta", configs: dict | None = None) -> dict:
    """The four SDXL networks at the published dimensions, on `meta` by default (shapes only, no memory).
    `configs` overrides them (the tests pass toy widths through the same writer)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    c = {"unet": FULL_UNET_CONFIG, "vae": FULL_VAE_CONFIG, "text_encoder": FULL_TEXT_ENCODER_CONFIG,
         "text_encoder_2": FULL_TEXT_ENCODER_2_CONFIG, **(configs or {})}
    with torch.device(device):
        return {
            "unet": UNet2DConditionModel(**c["unet"]),
            "vae": AutoencoderKL(**c["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**c["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**c["text_encoder_2"])),
        }


def seeded_tensor(module: torch.nn.Module, name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A random value for parameter `name` of `module` that keeps activations in range through deep stacks:
    norms at identity, weights LeCun-normal (std 1/sqrt(fan_in)), biases and embeddings N(0, 0.02)."""
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    values = torch.randn(shape, generator=generator)
    if len(shape) >= 2 and not isinstance(module, torch.nn.Embedding):
        fan_in = shape[1:].numel()
        return values / fan_in ** 0.5
    return values * 0.02


def seeded_state(model: torch.nn.Module, seed: int, dtype: torch.dtype = torch.float16):
    """(key, shape, make) for every entry of `model`'s state dict, `make` drawing that tensor on demand: a `meta`
    model is enough, and only one tensor exists at a time. Seeded per key, so the values do not depend on order."""
    import zlib

    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for key, shape in shapes.items():
        prefix, _, name = key.rpartition(".")
        module = model.get_submodule(prefix)

        def make(module=module, name=name, shape=shape, key=key) -> torch.Tensor:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
            return seeded_tensor(module, name, shape, generator).to(dtype)

        yield key, shape, make


SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}


def write_safetensors(path: Path, entries, dtype: torch.dtype = torch.float16) -> int:
    """Stream (key, shape, make) entries into a .safetensors file one tensor at a time (safetensors' format: u64
    header length, JSON header of dtypes / shapes / byte offsets, then the raw little-endian data). safetensors'
    own save_file needs every tensor in memory at once, 5 GB for SDXL's UNet in fp16. Returns the bytes written."""
    import struct

    entries = list(entries)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape, _ in entries:
        size = int(torch.Size(shape).numel()) * itemsize
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data 8-byte aligned, as safetensors writes it
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, shape, make in entries:
            tensor = make().contiguous()
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{key}: made {tensor.dtype} {list(tensor.shape)}, declared {dtype} {list(shape)}")
            f.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    tmp.replace(path)
    return 8 + len(blob) + offset


def write_full_sdxl(out: Path, seed: int = SEED, configs: dict | None = None) -> Path:
    """SDXL base 1.0 in diffusers layout with the published configs and seeded fp16 weights (about 6.9 GB)."""
    from diffusers import EulerDiscreteScheduler

    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".sdxl-full-", dir=out.parent if out.parent.exists() else None))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed set: unreadable to a container's other user
    try:
        modules = full_sdxl_modules("meta", configs)
        for i, (name, model) in enumerate(modules.items()):
            (tmp / name).mkdir()
            weights = "model.safetensors" if name.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
            if hasattr(model, "save_config"):  # diffusers
                model.save_config(tmp / name)
            else:  # transformers: as the published files (architectures; fp16 weights)
                model.config.architectures = [type(model).__name__]
                model.config.dtype = torch.float16
                model.config.save_pretrained(tmp / name)
            write_safetensors(tmp / name / weights, seeded_state(model, seed + 100 + i))
        write_clip_tokenizer(tmp / "tokenizer", pad_token="<|endoftext|>")
        write_clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
        EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(FULL_MODEL_INDEX, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def photomaker_lora_shapes(unet, rank: int = PHOTOMAKER_LORA_RANK) -> dict[str, tuple[int, int]]:
    """Key -> shape of PhotoMaker's LoRA on every attention projection of `unet` (a `meta` UNet will do), in the
    attention-processor format of the real photomaker-v1/v2.bin `lora_weights`:
    `unet.<attention path>.processor.{to_q,to_k,to_v,to_out}_lora.{down,up}.weight` (down [rank, in], up [out, rank])."""
    from diffusers.models.attention_processor import Attention

    shapes = {}
    for path, module in unet.named_modules():
        if isinstance(module, Attention):
            for name, linear in (("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v),
                                 ("to_out", module.to_out[0])):
                key = f"unet.{path}.processor.{name}_lora"
                shapes[f"{key}.down.weight"] = (rank, linear.in_features)
                shapes[f"{key}.up.weight"] = (linear.out_features, rank)
    return shapes


def write_full_photomaker(out: Path, unet_config: dict = FULL_UNET_CONFIG, seed: int = SEED,
                          id_config=None, rank: int = PHOTOMAKER_LORA_RANK) -> Path:
    """photomaker-v2.bin with every key and shape of the real file: V2's ID encoder at its published dimensions
    (IdEncoderConfig's defaults; no id_encoder_config.json, as with the real file) and the rank-64 LoRA for SDXL's
    UNet, fp16. LoRA up-projections at 0.2 / sqrt(rank) so the fused update is a visible, bounded change."""
    from diffusers import UNet2DConditionModel

    from portrait.models.identity import IdEncoderConfig, PhotoMakerIdEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        encoder = PhotoMakerIdEncoder(id_config or IdEncoderConfig())
        unet = UNet2DConditionModel(**unet_config)
    id_state = {key: make() for key, _, make in seeded_state(encoder, seed + 200)}
    generator = torch.Generator().manual_seed(seed + 201)
    lora = {}
    for key, (rows, cols) in photomaker_lora_shapes(unet, rank).items():
        scale = 1 / cols ** 0.5 if key.endswith("down.weight") else 0.2 / rank ** 0.5
        lora[key] = (torch.randn(rows, cols, generator=generator) * scale).half()
    tmp = out / ".photomaker-v2.bin.tmp"
    torch.save({"id_encoder": id_state, "lora_weights": lora}, tmp)
    (out / "id_encoder_config.json").unlink(missing_ok=True)
    if id_config is not None:
        id_config.write(out)
    tmp.replace(out / "photomaker-v2.bin")
    return out


def build_full_model_set(models_dir: Path, seed: int = SEED, force: bool = False) -> Path:
    """SDXL base 1.0 + PhotoMaker V2 at real dimensions with seeded random weights (about 8 GB), plus the buffalo_l
    ONNX files at their real input sizes and input/output names (small random networks: insightface's model_zoo
    routes them by those shapes to SCRFD at 640, Landmark at 192, ArcFaceONNX at 112; they find nothing meaningful)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    if force or not (models_dir / "sdxl" / "model_index.json").exists():
        write_full_sdxl(models_dir / "sdxl", seed)
    if force or not (models_dir / "photomaker" / "photomaker-v2.bin").exists():
        write_full_photomaker(models_dir / "photomaker", seed=seed)
    pack = models_dir / "insightface"
    if force or not (pack / "2d106det.onnx").exists():
        build_tiny_insightface(pack, seed)
    if force or not (pack / "w600k_r50.onnx").exists():
        build_tiny_arcface(pack, seed)
    return models_dir
