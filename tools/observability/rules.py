"""Conveyor's recording and alerting rules, written once (RULES_TEMPLATE) and rendered three ways.

* `rules_text()`: observability/rules/conveyor-rules.yml, for any Prometheus;
* `chart_rules_text()`: the Helm chart's copy, with placeholders the chart fills per release;
* `scaled_rules_text(factor)`: the standalone rules with every duration divided by `factor`,
  for the fault-injection test (tests/observability/test_fault_alerts.py), so it runs the
  shipped rules, not a hand-copied file.

Scope. Every series carries `namespace` and `conveyor_release` (the chart's ServiceMonitor and
PodMonitor add them; a standalone scrape config must add conveyor_release itself), and every
aggregation keeps them, so two releases never add up and each alert names its release. Beyond
that, each release's PrometheusRule must read only its own series (or absent() cannot be
scoped, and two releases' recording rules would write the same series): in RULES_TEMPLATE,
`@` inside a selector's braces marks where the release's matchers go, and `@hpa` the matchers
of its HorizontalPodAutoscalers (kube-state-metrics series, which have no conveyor_release).
The chart's copy carries SCOPE_PLACEHOLDER and HPA_PLACEHOLDER there, which monitoring.yaml
replaces; observability/rules (for any Prometheus) has them removed.

Tiers that always run. ConveyorTierWithoutWorkers watches the tiers that never scale to zero:
ALWAYS_ON_TIERS here (the chart's defaults with KEDA: `low` scales to zero), and in the chart
the release's own (monitoring.yaml replaces `ALWAYS_ON_TIERS,__CONVEYOR_SCOPE__` with the
tiers whose minimum replica count is at least 1).
"""

import re
from typing import Any

import yaml

# The labels that tell releases apart, and the placeholders of the chart's copy of the rules
# (charts/conveyor/templates/monitoring.yaml replaces them with the release's matchers).
SCOPE_LABELS = ("namespace", "conveyor_release")
SCOPE_PLACEHOLDER = "__CONVEYOR_SCOPE__"
HPA_PLACEHOLDER = "__CONVEYOR_HPA_SCOPE__"
ALWAYS_ON_TIERS = 'queue=~"default|high"'

RULES_TEMPLATE = """\
groups:
  - name: conveyor.recording
    interval: 30s
    rules:
      - record: queue:conveyor_job_queue_wait_seconds:p95_5m
        expr: >-
          histogram_quantile(0.95, sum by (namespace, conveyor_release, queue, le)
          (rate(conveyor_job_queue_wait_seconds_bucket{@}[5m])))
      - record: queue_task:conveyor_jobs_finished:increase5m
        expr: >-
          sum by (namespace, conveyor_release, queue, task)
          (increase(conveyor_jobs_completed_total{outcome=~"succeeded|failed",@}[5m]))
      - record: queue_task:conveyor_jobs_failed:increase5m
        expr: >-
          sum by (namespace, conveyor_release, queue, task)
          (increase(conveyor_jobs_completed_total{outcome="failed",@}[5m]))
      - record: queue:conveyor_worker_saturation:ratio
        expr: >-
          sum by (namespace, conveyor_release, queue) (conveyor_worker_active_jobs{@})
          / sum by (namespace, conveyor_release, queue) (conveyor_worker_concurrency{@})

  - name: conveyor.alerts
    rules:
      - alert: ConveyorScrapeTargetDown
        expr: up{conveyor_release!="",@} == 0
        for: 2m
        labels: {severity: warning}
        annotations:
          summary: "Prometheus cannot scrape {{ $labels.instance }} ({{ $labels.job }})"
          runbook: >-
            A Conveyor pod (API, worker, beat or exporter) is discovered but its metrics port
            does not answer: the process is down or restarting (kubectl describe pod, its
            logs, CrashLoopBackOff, OOMKilled), or a NetworkPolicy does not admit Prometheus
            (networkPolicy.metricsFrom). While it lasts, the alerts built on that component's
            series are blind: a dead exporter blinds every queue alert (ConveyorMetricsAbsent
            follows), a dead worker tier shows as ConveyorTierWithoutWorkers.

      - alert: ConveyorTierWithoutWorkers
        # Tiers that never scale to zero (the chart names its release's own): no live worker
        # is a fault even with an empty queue. conveyor_workers drops a killed worker within
        # 2.5 heartbeats (0.625 x the visibility timeout); it is NaN, not 0, while the
        # exporter cannot read Redis (ConveyorRedisUnreachable).
        expr: >-
          max by (namespace, conveyor_release, queue)
            (conveyor_workers{queue=~"default|high",@}) == 0
        for: 2m
        labels: {severity: critical}
        annotations:
          summary: "No live worker consumes the {{ $labels.queue }} queue"
          runbook: >-
            Every worker of the {{ $labels.queue }} tier stopped heartbeating: nothing will run
            its jobs, and ConveyorBacklogWithoutConsumers follows once jobs arrive. Check the
            tier's pods (kubectl get pods -l
            app.kubernetes.io/component=worker-{{ $labels.queue }}): CrashLoopBackOff or
            OOMKilled (kubectl describe pod, the previous container's logs), pods Pending for
            lack of nodes, or a Deployment scaled to 0.
            Accepted jobs wait safely in Redis; a dead worker's running jobs are redelivered
            after the visibility timeout.

      - alert: ConveyorBacklogWithoutConsumers
        # The exporter always reports conveyor_workers (0 when none), so this cannot go
        # silent by the series disappearing. 5 minutes leaves KEDA time to scale a tier up
        # from zero (polling interval, pod start); tiers that never scale to zero page sooner
        # through ConveyorTierWithoutWorkers.
        expr: >-
          max by (namespace, conveyor_release, queue) (conveyor_queue_length{@}) > 0
          and on (namespace, conveyor_release, queue)
          max by (namespace, conveyor_release, queue) (conveyor_workers{@}) == 0
        for: 5m
        labels: {severity: critical}
        annotations:
          summary: "Jobs are waiting on the {{ $labels.queue }} queue and no worker consumes it"
          runbook: >-
            Nothing runs the {{ $labels.queue }} tier while jobs wait. Check the tier's
            Deployment and its KEDA ScaledObject (kubectl get scaledobject,hpa,pods -l
            app.kubernetes.io/component=worker-{{ $labels.queue }}): a ScaledObject that
            cannot read the demand (the exporter's /scaling endpoint, TriggerAuthentication,
            NetworkPolicy), pods in CrashLoopBackOff (liveness: `conveyor worker --check`),
            pods Pending for lack of nodes (a cluster autoscaler adding one takes minutes), or
            maxReplicaCount 0. Jobs are safe in Redis meanwhile; they run once workers are back.

      - alert: ConveyorQueueWaitHigh
        # The p95 is over 5 minutes, and so is `for`: a wait above the objective for a whole
        # window pages, a single slow minute does not.
        expr: >-
          (queue:conveyor_job_queue_wait_seconds:p95_5m{queue="high",@} > 10)
          or (queue:conveyor_job_queue_wait_seconds:p95_5m{queue="default",@} > 120)
          or (queue:conveyor_job_queue_wait_seconds:p95_5m{queue="low",@} > 1800)
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "p95 queue wait on {{ $labels.queue }} is above the tier's objective"
          runbook: >-
            Jobs wait longer than the tier's objective before they start (high 10 s, default
            2 min, low 30 min). Compare the arrival rate with the tier's capacity on the
            Workers dashboard: if workers are saturated (ConveyorWorkersSaturated), raise
            maxReplicaCount or concurrency; if they are idle, look for a stuck consumer
            (liveness restarts) or a slow Redis.

      - alert: ConveyorOldestMessageTooOld
        expr: >-
          (max by (namespace, conveyor_release, queue)
            (conveyor_queue_oldest_message_age_seconds{queue="high",@}) > 60)
          or (max by (namespace, conveyor_release, queue)
            (conveyor_queue_oldest_message_age_seconds{queue="default",@}) > 600)
          or (max by (namespace, conveyor_release, queue)
            (conveyor_queue_oldest_message_age_seconds{queue="low",@}) > 3600)
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "The oldest message on {{ $labels.queue }} has waited too long"
          runbook: >-
            The head of the queue is not moving fast enough. Unlike the wait percentile this
            fires even when nothing starts at all. Check that the tier has workers and that
            they are not all busy with long jobs; a backlog that grows faster than it drains
            needs more replicas (KEDA maxReplicaCount) or concurrency.

      - alert: ConveyorFailureRatioHigh
        # At least 20 finished attempts in 5 minutes, so a single failure on a quiet task
        # does not page anyone. (Volume guards count events in the window rather than compare
        # a rate: the same rules then hold with every duration scaled, as in the fault drill.)
        expr: >-
          (queue_task:conveyor_jobs_failed:increase5m{@}
            / queue_task:conveyor_jobs_finished:increase5m{@} > 0.1)
          and (queue_task:conveyor_jobs_finished:increase5m{@} >= 20)
        for: 2m
        labels: {severity: warning}
        annotations:
          summary: "{{ $labels.task }} on {{ $labels.queue }} fails more than 10% of its attempts"
          runbook: >-
            More than 10% of the task's attempts fail. The Tasks dashboard shows the exception
            types; GET /v1/jobs?task={{ $labels.task }}&state=failed shows recent errors. A
            downstream outage (webhook receiver, SMTP relay) shows as RetryableError and
            recovers by itself; PermanentError or ValidationError points at bad input or a
            deploy.

      - alert: ConveyorWorkersSaturated
        # Conveyor's own metrics, no kube-state-metrics needed: every slot busy for 5 minutes
        # while the oldest waiting message keeps getting older (by over a minute per ten).
        expr: >-
          (avg_over_time(queue:conveyor_worker_saturation:ratio{@}[5m]) > 0.9)
          and on (namespace, conveyor_release, queue)
          (max by (namespace, conveyor_release, queue)
            (deriv(conveyor_queue_oldest_message_age_seconds{@}[10m])) > 0.1)
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "The {{ $labels.queue }} tier is saturated and its queue wait keeps growing"
          runbook: >-
            Every job slot of the tier is busy and jobs wait longer and longer: arrivals
            exceed the tier's capacity. Check whether it can still grow (the tier's HPA or
            ScaledObject: current against maximum replicas; ConveyorWorkersSaturatedAtMaxReplicas
            where kube-state-metrics runs) and raise maxReplicaCount or concurrency, or look
            for jobs that got slower (the Tasks dashboard's run time) or a flood from one
            tenant (its rate limit).

      - alert: ConveyorUnackedNearVisibilityTimeout
        expr: >-
          max by (namespace, conveyor_release) (conveyor_unacked_oldest_age_seconds{@})
          > 0.8 * max by (namespace, conveyor_release) (conveyor_visibility_timeout_seconds{@})
        for: 2m
        labels: {severity: warning}
        annotations:
          summary: "An unacked delivery's lease is close to the visibility timeout"
          runbook: >-
            Running jobs renew their lease four times per visibility timeout, so an old lease
            means a worker died with the job (it will be redelivered after the timeout) or
            workers cannot write to Redis. Occasional firing after a node loss is expected;
            steady firing: check worker logs for "could not renew leases" and Redis latency.

      - alert: ConveyorDeadLettersGrowing
        # The workers' counter (created at 0 when a worker starts, so the first dead letter
        # is an increase), by queue and task.
        expr: >-
          sum by (namespace, conveyor_release, queue, task)
            (increase(conveyor_jobs_dead_lettered_total{@}[15m])) > 0
        for: 0m
        labels: {severity: warning}
        annotations:
          summary: "Jobs of {{ $labels.task }} on {{ $labels.queue }} were dead-lettered lately"
          runbook: >-
            Jobs of {{ $labels.task }} killed their worker three times (OOM, segfault) or ran
            out of retries. This alert resolves 15 minutes after the last one;
            ConveyorDeadLettersPresent stays while any is kept. List them with GET
            /v1/dead-letters (admin key): each job's error says why. Fix the cause, then
            replay (POST /v1/dead-letters/{id}/replay, or /v1/dead-letters/replay for all) or
            purge them (DELETE /v1/dead-letters/{id}).

      - alert: ConveyorDeadLettersPresent
        expr: max by (namespace, conveyor_release) (conveyor_dead_letters{@}) > 0
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "Dead-lettered jobs wait for a replay or a purge"
          runbook: >-
            Dead letters are jobs that will not run again by themselves; they are kept
            JOBS__DEAD_LETTER_RETENTION_SECONDS (14 days by default). Inspect: GET
            /v1/dead-letters?limit=50 with an admin key lists them, newest first, each with
            its task, queue, attempts and error; GET /v1/jobs/{id} shows one. Fix the cause
            (a deploy, a downstream outage, a job that OOMs its worker), then replay one with
            POST /v1/dead-letters/{id}/replay or all with POST /v1/dead-letters/replay (each
            runs again as a new attempt of the same job), or drop them with DELETE
            /v1/dead-letters/{id} or DELETE /v1/dead-letters. The alert resolves when none is
            left.

      - alert: ConveyorBeatNotTicking
        # The last tick of the past hour, so a beat that died (its series gone stale) fires
        # per release with any Prometheus; absent() covers a release that never ticked, per
        # release only where the selector names the release (the chart's copy).
        expr: >-
          (time() - max by (namespace, conveyor_release)
            (max_over_time(conveyor_beat_last_tick_timestamp_seconds{@}[1h])) > 120)
          or absent(conveyor_beat_last_tick_timestamp_seconds{@})
        for: 2m
        labels: {severity: critical}
        annotations:
          summary: "No beat scheduler has ticked for over two minutes"
          runbook: >-
            Periodic jobs are not being submitted. Check the beat pod (one replica, Recreate)
            and its logs: a beat that cannot reach Redis, or a standby waiting for a lock whose
            holder is gone (it takes over after the lock timeout, 30 s by default).

      - alert: ConveyorBeatTwoLeaders
        expr: sum by (namespace, conveyor_release) (conveyor_beat_leader{@}) > 1
        for: 1m
        labels: {severity: critical}
        annotations:
          summary: "More than one beat process believes it holds the scheduler lock"
          runbook: >-
            Two schedulers may submit the same periodic run (each run's idempotency key still
            deduplicates a tick). This happens when the lock expired while a leader was
            paused (GC, CPU starvation) longer than the lock timeout. Restart the beat pods;
            if it recurs, raise CONVEYOR_BEAT__LOCK_TIMEOUT_SECONDS.

      - alert: ConveyorMetricsAbsent
        # absent() cannot be grouped by release: the chart's copy names its release in the
        # selector, so each release has its own alert (labelled with its namespace and
        # release); a standalone Prometheus gets one alert while no release reports at all.
        # ConveyorScrapeTargetDown names the pod when a target exists but does not answer.
        # A stopped exporter's series go stale at the next failed scrape: this fires about
        # 2.5 minutes later.
        expr: absent(conveyor_exporter_up{@}) or absent(conveyor_http_requests_total{@})
        for: 2m
        labels: {severity: warning}
        annotations:
          summary: "Conveyor's exporter or API metrics are missing"
          runbook: >-
            Without these series the other alerts cannot fire. Check that the exporter and API
            pods run and that their ServiceMonitor/PodMonitor is selected by Prometheus (the
            chart's monitoring.labels must match the Prometheus selector, e.g. release).
            Without prometheus-operator, the scrape config must add the conveyor_release and
            namespace labels (observability/README.md).

      - alert: ConveyorRedisUnreachable
        # The exporter keeps serving every series (NaN) while it cannot read Redis.
        expr: max by (namespace, conveyor_release) (conveyor_exporter_up{@}) == 0
        for: 1m
        labels: {severity: critical}
        annotations:
          summary: "The exporter cannot read Redis"
          runbook: >-
            The API is answering 503 and workers are reconnecting. Check the Redis pod or
            service, its memory (noeviction refuses writes when full), and the password
            Secret. Accepted jobs are kept (AOF); they run once Redis is back. Meanwhile the
            exporter's queue gauges are NaN, so the queue alerts neither fire nor resolve.

      - alert: ConveyorApiKeysReloadFailing
        # A changed keys file that does not load is retried every reload interval, so this
        # keeps firing until the file is mended; the API serves the previous keys meanwhile.
        expr: >-
          sum by (namespace, conveyor_release)
            (increase(conveyor_api_keys_reloads_total{outcome="failed",@}[5m])) > 0
        for: 2m
        labels: {severity: warning}
        annotations:
          summary: "The API cannot load its changed keys file"
          runbook: >-
            The keys file (auth.keysSecret) changed but does not parse, is empty or lists no
            keys: the API goes on with the previous keys, so keys added since are refused
            (401) and revoked ones still work. Read the API's log ("keys file ... not
            reloaded"), fix the Secret, and this resolves within minutes of the next reload.

      - alert: ConveyorApiErrorRatioHigh
        # At least 5 errors in the window, so one 500 on a quiet API does not page.
        expr: >-
          (sum by (namespace, conveyor_release)
            (rate(conveyor_http_requests_total{status=~"5..",@}[2m]))
          / sum by (namespace, conveyor_release) (rate(conveyor_http_requests_total{@}[2m]))
          > 0.05)
          and (sum by (namespace, conveyor_release)
            (increase(conveyor_http_requests_total{status=~"5..",@}[2m])) >= 5)
        for: 1m
        labels: {severity: warning}
        annotations:
          summary: "More than 5% of the API's responses are server errors"
          runbook: >-
            The API answers 5xx. The API dashboard's requests by route and status tell which
            routes: 503 on POST /v1/jobs and /readyz is a broker problem
            (ConveyorSubmissionsFailing, ConveyorRedisUnreachable); 500 is a bug (the API
            pods' logs have the traceback; a recent deploy is the usual cause: roll it back).

      - alert: ConveyorSubmissionsFailing
        # Submissions refused because the job store could not be written (503
        # broker-unavailable): nothing was accepted, callers must retry.
        expr: >-
          (sum by (namespace, conveyor_release)
            (rate(conveyor_api_submissions_total{outcome="broker_error",@}[2m]))
          / sum by (namespace, conveyor_release) (rate(conveyor_api_submissions_total{@}[2m]))
          > 0.01)
          and (sum by (namespace, conveyor_release)
            (increase(conveyor_api_submissions_total{outcome="broker_error",@}[2m])) >= 3)
        for: 1m
        labels: {severity: critical}
        annotations:
          summary: "Job submissions fail: the API cannot write to Redis"
          runbook: >-
            More than 1% of POST /v1/jobs answer 503 broker-unavailable: callers' jobs are not
            accepted. Check Redis (ConveyorRedisUnreachable, the Redis pod, its memory: with
            noeviction a full Redis refuses writes while reads still work), the API pods' logs
            for the Redis error, and the network path from the API to Redis (NetworkPolicy,
            DNS). Accepted jobs are not affected.

      - alert: ConveyorAcceptLatencyHigh
        # At least 20 accepted jobs in 5 minutes: the p99 of a handful means nothing.
        expr: >-
          (histogram_quantile(0.99, sum by (namespace, conveyor_release, le)
            (rate(conveyor_api_accept_duration_seconds_bucket{@}[5m]))) > 0.25)
          and (sum by (namespace, conveyor_release)
            (increase(conveyor_api_accept_duration_seconds_count{@}[5m])) >= 20)
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "p99 of accepting a job is above 250 ms"
          runbook: >-
            Recording and enqueueing a job is one Redis round trip (a few milliseconds), so a
            slow accept is a slow Redis: check its latency (redis-cli --latency), CPU, memory
            and persistence (AOF fsync on a slow disk), and slow commands (SLOWLOG GET). Also
            check the API pods' CPU throttling: a saturated event loop delays every request.

      - alert: ConveyorWorkersSaturatedAtMaxReplicas
        # kube-state-metrics' HPA series carry the HPA's namespace but no conveyor_release:
        # the chart's copy selects its own release's HPAs by name.
        expr: >-
          (queue:conveyor_worker_saturation:ratio{@} > 0.9)
          and on (namespace, queue)
          (
            label_replace(
              max by (namespace, horizontalpodautoscaler)
                (kube_horizontalpodautoscaler_status_current_replicas{@hpa}),
              "queue", "$1", "horizontalpodautoscaler", ".*worker-(high|default|low)")
            >= on (namespace, horizontalpodautoscaler, queue)
            label_replace(
              max by (namespace, horizontalpodautoscaler)
                (kube_horizontalpodautoscaler_spec_max_replicas{@hpa}),
              "queue", "$1", "horizontalpodautoscaler", ".*worker-(high|default|low)")
          )
        for: 15m
        labels: {severity: warning}
        annotations:
          summary: "The {{ $labels.queue }} tier is saturated at its maximum replicas"
          runbook: >-
            Every job slot of the tier is busy and KEDA cannot add workers. Raise the tier's
            maxReplicaCount (workers.{{ $labels.queue }}.autoscaling.maxReplicas) or its
            concurrency if the nodes have room; otherwise the backlog grows until the queue
            wait alerts fire.
"""

_RULES_HEADER = """\
# Conveyor recording and alerting rules. Generated by `python -m tools.observability.artifacts`
# from RULES_TEMPLATE in tools/observability/rules.py: edit there.
# Every aggregation keeps `namespace` and `conveyor_release`, so one Prometheus can watch
# several releases (without prometheus-operator, the scrape config must add both labels).
# tests/observability runs `promtool test rules` on conveyor-rules.test.yml, which has a
# firing and a non-firing case for every alert.
"""

_CHART_RULES_HEADER = """\
# Generated by `python -m tools.observability.artifacts` (RULES_TEMPLATE in
# tools/observability/rules.py): observability/rules/conveyor-rules.yml with a placeholder in
# every selector. templates/monitoring.yaml replaces __CONVEYOR_SCOPE__ with
# namespace="<release namespace>",conveyor_release="<release name>" and
# __CONVEYOR_HPA_SCOPE__ with the release's HorizontalPodAutoscalers, so each release's
# PrometheusRule reads only its own series; and the tiers of ConveyorTierWithoutWorkers with
# the release's tiers that never scale to zero.
"""

_MARK = re.compile(r"(,?)@(hpa)?(?=})")


def chart_rules_text() -> str:
    """The chart's copy of the rules: placeholders the chart replaces per release."""
    body = _MARK.sub(lambda m: m.group(1) + (HPA_PLACEHOLDER if m.group(2) else SCOPE_PLACEHOLDER),
                     RULES_TEMPLATE)  # fmt: skip
    return _CHART_RULES_HEADER + body


def rules_text() -> str:
    """observability/rules/conveyor-rules.yml: the placeholders removed (empty scope)."""
    return _RULES_HEADER + re.sub(r"(?<=[\w:])\{\}", "", _MARK.sub("", RULES_TEMPLATE))


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# A range selector's window, a group's `interval:` or an alert's `for:`.
_DURATION = re.compile(r"(?<=\[)(\d+)(ms|s|m|h|d)(?=\])|(?<=interval: )(\d+)(ms|s|m|h|d)"
                       r"|(?<=for: )(\d+)(ms|s|m|h|d)")  # fmt: skip


def scaled_rules_text(factor: float) -> str:
    """The standalone rules with every window, evaluation interval and `for:` divided by
    `factor` (at least 1 s, 0 stays 0). Thresholds stay: a test drives faults `factor` times
    faster through the same expressions.
    """

    def scale(match: re.Match[str]) -> str:
        number, unit = next((n, u) for n, u in zip(match.groups()[::2], match.groups()[1::2],
                                                  strict=True) if n)  # fmt: skip
        seconds = int(number) * _UNITS[unit] / factor
        if seconds == 0:
            return "0s"
        return f"{max(1000, round(seconds * 1000))}ms"

    return _DURATION.sub(scale, rules_text())


def alert_rules(text: str | None = None) -> dict[str, dict[str, Any]]:
    """Alert name -> rule, from the rules file's text (the standalone rules by default)."""
    groups = yaml.safe_load(text if text is not None else rules_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
