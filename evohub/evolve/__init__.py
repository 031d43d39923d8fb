"""Evolution: search spaces as vectors (genome), CMA-ES with resumable runs (search), and the
evaluation of populations in-process or on Ray actors (pool)."""
