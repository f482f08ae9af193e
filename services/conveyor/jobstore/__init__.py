"""The job store: the one owner of a job's record, its state machine and its Redis keys.

Its public surface is the job's verbs (`machine.Verb`): `JobStore` (workers and beat) and
`AsyncJobStore` (the API) name each one — submit (accept), start, report_progress, retry,
succeed, fail, dead_letter, hand_back, cancel, replay, purge, list_jobs — with typed results.
Its private half owns the Lua scripts (`lua/`, `scripts.py`), the record codec
(`model.py`, beside the `Job` model) and the key names (`keys.py`).

Nothing is imported here: the client library reads `conveyor.jobstore.model` alone, without
pulling in Redis scripts or the stores.
"""
