"""The control loop: one worker per deployment, from desired state to containers.

`worker` runs the rounds (observe, `plan` (pure), act, publish the ready set to the
deployment's endpoint in `endpoints`); `replica_ops` executes the actions; `replica_spec`
shapes a replica's container; `replicas` is what a worker remembers of each; `prober`
schedules the probes; `rollout` watches a revision's progress deadline; `zero` scales to
zero and back (idle unload, cold starts and their cancel, the swap); `ports` hands out host
ports; `context` holds the types the others share. May import `config`, `proxy`,
`daemon.runtime`, `daemon.store`, `daemon.gpu`, `daemon.health`, `daemon.scaling`,
`daemon.metrics`, `daemon.integrations` and `daemon.secrets`.
"""
