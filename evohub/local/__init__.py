"""Local stand-ins that user commands need: the demo's trained world (shipped as package data),
the tiny random world of ``evohub wiring``, and a server that speaks the Hub's HTTP API, which
``evohub demo`` publishes to through the real huggingface_hub client (docs/design.md#local)."""
