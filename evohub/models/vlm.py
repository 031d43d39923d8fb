"""``vlm``: a LLaVA-style vision-language model. Only its language model is merged; the vision
tower, projector and image newline are copied from the VLM source unchanged."""

from evohub.models import KINDS, ModelKind

KINDS.register(
    ModelKind(
        name="vlm",
        doc="a LLaVA-style VLM (vision tower + language model); only the language model is merged",
        detect=lambda config: "vision_config" in config and "text_config" in config,
        auto_class="AutoModelForImageTextToText",
        pipeline_tag="image-text-to-text",
        card="vlm",
        vision=True,
        processor=True,
        # the checkpoint layout of transformers < 5, then transformers 5's module layout
        lm_prefixes=(
            ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."),
            ("model.language_model.", "model."),
            ("lm_head.", "lm_head."),
        ),
    )
)
