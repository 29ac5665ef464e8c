import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import torch  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.errors import InvalidInput, ModelSetError  # noqa: E402
from portrait.identity import IdEncoderConfig, clip_pixels, load_id_encoder, read_photomaker_file  # noqa: E402
from portrait.params import MAX_ID_IMAGES, check_finite, check_id_images, check_shape, decode_image  # noqa: E402
from portrait.torch_models import torch_setup  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        io.setup(args)
        settings = torch_setup()
        self.device, self.encoder, self.path = settings.device, None, settings.photomaker_file
        if self.path is None:  # the server still serves everything but identity; requests say why
            return
        config = IdEncoderConfig.read(self.path.parent)
        encoder = load_id_encoder(read_photomaker_file(self.path)["id_encoder"], config, str(self.path))
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.encoder, self.config, self.dtype = encoder.to(self.device, dtype), config, dtype

    def execute(self, requests):
        return io.respond_each(requests, self.fuse)

    @torch.no_grad()
    def fuse(self, request):
        if self.encoder is None:
            raise ModelSetError("identity needs PhotoMaker V2 weights at <models>/photomaker/photomaker-v2.bin")
        photos = io.get_array(request, "id_images").reshape(-1)
        embeds = io.get_array(request, "id_embeds")
        prompt_embeds, mask = io.get_array(request, "prompt_embeds"), io.get_array(request, "class_tokens_mask")
        n = len(photos)
        if n == 0:
            raise InvalidInput("id_images", "needs at least one identity photo")
        check_id_images(n, MAX_ID_IMAGES)
        if embeds.shape != (n, self.config.id_embeddings_dim):
            raise InvalidInput("id_embeds", f"must have shape [{n}, {self.config.id_embeddings_dim}], got {list(embeds.shape)}")
        if int(mask.sum()) != n * self.config.num_tokens:
            raise InvalidInput("class_tokens_mask", f"must mark {self.config.num_tokens} x {n} positions, got {int(mask.sum())}")
        if prompt_embeds.shape[-1] != self.config.cross_attention_dim:
            raise InvalidInput("prompt_embeds", f"must have width {self.config.cross_attention_dim}, got {prompt_embeds.shape[-1]}")
        check_shape("prompt_embeds", prompt_embeds, (1, 77, self.config.cross_attention_dim))
        check_finite("id_embeds", embeds)
        check_finite("prompt_embeds", prompt_embeds)
        images = [decode_image(bytes(p), "id_images") for p in photos]
        pixels = clip_pixels(images, self.config.image_size).to(self.device, self.dtype)
        fused = self.encoder(pixels, torch.from_numpy(prompt_embeds.copy()).to(self.device, self.dtype),
                             torch.from_numpy(mask.copy()).to(self.device),
                             torch.from_numpy(embeds.copy()).to(self.device, self.dtype))
        return io.pb_utils.InferenceResponse([io.tensor("id_prompt_embeds", fused.float().cpu().numpy())])
