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
    from portrait.identity import IdEncoderConfig

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

    from portrait.identity import PhotoMakerIdEncoder

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
