-- Nothing but a write script's refusal: a replica (READONLY) or a primary short of its good
-- replicas (NOREPLICAS: an isolated old primary) refuses it before it runs, so a client that
-- only reads (the exporter, hence the autoscaler) learns that its connection points at a
-- node it must leave, instead of serving that node's frozen figures. Flagged `allow-oom`:
-- a full Redis still answers it (metrics matter most then).
-- Returns 1.
return 1
