"""Every huggingface_hub call evohub makes (docs/design.md#hub).

This layer knows the Hub, not evohub's documents: it takes repo ids, revisions and files and
gives back commits, directories and texts. Errors become one-line :class:`~evohub.errors.HubError`
messages that name the repo and say what to do; the token (``HF_TOKEN`` or the HF cache) is never
an argument and never appears in them.

- :mod:`~evohub.hub.client`: configs, model info, licences, snapshots (pinned pulls), retries;
- :mod:`~evohub.hub.commit`: one commit with many files, tagged; the run state in a dataset repo;
- :mod:`~evohub.hub.card`: model cards (Jinja templates rendered into ``ModelCard``) and eval results.
"""
