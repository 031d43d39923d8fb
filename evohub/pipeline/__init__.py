"""A job's run: its directory, the whole pipeline, its plan, its publication (docs/design.md#runs).

- :mod:`~evohub.pipeline.rundir`: the run directory — the one owner of its paths;
- :mod:`~evohub.pipeline.job`: pull → evolve each stage → merge the best → evaluate → publish;
- :mod:`~evohub.pipeline.plan`: what a job will cost before it runs;
- :mod:`~evohub.pipeline.publish`: a finished run as one Hub commit, with its card.
"""
