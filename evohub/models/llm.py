"""``llm``: a decoder-only language model (``*ForCausalLM``): every tensor is merged."""

from evohub.models import KINDS, ModelKind

KINDS.register(
    ModelKind(
        name="llm",
        doc="a decoder-only language model (`*ForCausalLM`); every tensor takes part in the merge",
        detect=lambda config: True,
        auto_class="AutoModelForCausalLM",
        pipeline_tag="text-generation",
        card="llm",
        priority=-1,
    )
)
