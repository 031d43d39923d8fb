"""``sdxl``: a Stable Diffusion XL pipeline (diffusers' ``model_index.json`` layout, or a UNet
alone). Only the UNet is merged; every other component is taken whole from one source
(docs/design.md#diffusion-pipelines)."""

from evohub.models import KINDS, ModelKind


def _detect(config: dict) -> bool:
    # a pipeline's model_index.json names its unet; a UNet alone's config is the UNet's own
    return "unet" in config or config.get("_class_name") == "UNet2DConditionModel"


KINDS.register(
    ModelKind(
        name="sdxl",
        doc="a Stable Diffusion XL pipeline (diffusers); the UNet is merged, the other components taken whole",
        detect=_detect,
        auto_class="DiffusionPipeline",
        pipeline_tag="text-to-image",
        card="sdxl",
        priority=2,
        library="diffusers",
    )
)
