"""A merge method added in one file: the unweighted mean of the models (a plug-in's own kernel)."""

from evohub.merging.methods import METHODS, MergeMethod


def mean_kernel(method, base, sources, weights, densities, keys, normalize, out, ws, tables):
    """out = (1/K) Σ θ_k, whatever the weights (so a test can check it exactly)."""
    acc = sources[0].float().clone()
    for x in sources[1:]:
        acc += x.float()
    return out.copy_(acc / len(sources))


TOY = METHODS.register(
    MergeMethod(
        name="toy_mean",
        doc="the unweighted mean of the models (a test plug-in)",
        kernel=mean_kernel,
        base=False,
        models=(2, None),
    )
)
