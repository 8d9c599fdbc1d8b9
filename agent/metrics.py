"""Every Prometheus metric the agent exports, defined once against a registry made at start-up."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.asset_series import AssetSeries
from agent.config import MetricsConfig
from agent.ingest import IGNORED, Reason

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Warning lead times: from minutes to weeks.
_LEAD_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0,
                 2 * 86400.0, 4 * 86400.0, 7 * 86400.0, 14 * 86400.0)
EVENT_KINDS = ("maintenance_start", "maintenance_end", "failure", "repair")
COMMANDS = ("ack", "shelve", "unshelve", "promote", "refit")
# What became of a candidate model: judged before it served (accepted as the shadow, refused,
# failed to train), then on trial beside the live model (dropped: did worse).
CANDIDATE_RESULTS = ("accepted", "refused", "failed", "dropped")
PROMOTED_BY = ("trial", "operator")
COMMAND_RESULTS = ("ok", "noop", "rejected")
MODELS = ("live", "shadow")
SUPPRESSED_BY = ("maintenance", "shelved", "flood")
# Why readings were not recorded ([record]): the writer was behind, a file could not be
# written, or the writer did not finish within the stop's time.
RECORD_DROPPED_BY = ("queue_full", "write_error", "shutdown")


class Metrics:
    """The agent's metrics; pass `CollectorRegistry()` in tests to keep them apart."""

    def __init__(self, registry: CollectorRegistry, config: MetricsConfig | None = None) -> None:
        self.registry = registry
        r = registry
        cfg = config or MetricsConfig()
        # vigil_asset_risk{asset}, vigil_asset_level{asset} and the fleet series beside them,
        # made at scrape time from one entry per asset (bounded by [metrics] per_asset).
        self.asset_series = AssetSeries(cfg.per_asset, cfg.per_asset_limit)
        r.register(self.asset_series)
        self.readings_accepted = Counter(
            "vigil_readings_accepted", "Readings written into windows.", registry=r)
        self.readings_rejected = Counter(
            "vigil_readings_rejected", "Rejected readings (a message that cannot be decoded counts once).",
            ["reason"], registry=r)
        for reason in Reason:  # every reason visible at zero, so rate() works from the start
            if reason.is_rejection:
                self.readings_rejected.labels(reason.value)
        self.readings_ignored = Counter(
            "vigil_readings_ignored",
            "Readings of normal traffic not written, by why: unmapped tags, unsupported datatypes, "
            "bad quality (bad input counts in vigil_readings_rejected_total).", ["reason"], registry=r)
        for reason in IGNORED:
            self.readings_ignored.labels(reason.value)
        self.readings_skipped = Counter(
            "vigil_readings_skipped", "Readings of assets this agent does not serve ([assets] allow).",
            registry=r)
        self.messages_dropped = Counter(
            "vigil_messages_dropped", "Messages dropped because the intake queue was full.", registry=r)
        self.windows_inferred = Counter(
            "vigil_windows_inferred", "Windows run through the model.", registry=r)
        self.inference_batch_size = Histogram(
            "vigil_inference_batch_size", "Windows per inference batch.", buckets=_BATCH_BUCKETS,
            registry=r)
        self.inference_duration = Histogram(
            "vigil_inference_duration_seconds", "Wall time of one inference batch.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.reading_to_risk = Histogram(
            "vigil_reading_to_risk_seconds",
            "From the arrival of a window's newest reading to its risk being published.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.alerts = Counter("vigil_alerts", "Level transitions published as alerts.", ["level"],
                              registry=r)
        for level in ("ok", "warning", "critical"):
            self.alerts.labels(level)
        self.alerts_dropped = Counter(
            "vigil_alerts_dropped", "Alerts not stored because the outbox was full (only returns to ok).",
            ["level"], registry=r)
        self.outbox_errors = Counter(
            "vigil_outbox_errors", "Outbox writes that failed (disk full or unwritable).", registry=r)
        self.assets = Gauge("vigil_assets", "Assets with state held.", registry=r)
        self.assets_stale = Gauge("vigil_assets_stale", "Assets whose window is not whole.", registry=r)
        self.assets_learning = Gauge("vigil_assets_learning_baseline",
                                     "Assets still learning their own baseline (not scored yet).", registry=r)
        self.mqtt_connected = Gauge("vigil_mqtt_connected", "1 while connected to the broker.",
                                    registry=r)
        self.outbox_depth = Gauge("vigil_outbox_depth", "Alerts waiting for a broker acknowledgement.",
                                  registry=r)
        self.queue_depth = Gauge("vigil_intake_queue_depth", "Messages waiting to be processed.",
                                 registry=r)
        self.checkpoint_time = Gauge(
            "vigil_checkpoint_timestamp_seconds", "When per-asset state was last checkpointed (unix time).",
            registry=r)
        self.model_info = Gauge("vigil_model_info", "The model serving now (value 1).", ["version"],
                                registry=r)
        self.model_created = Gauge(
            "vigil_model_created_timestamp_seconds", "When the serving model was trained (unix time).",
            registry=r)
        self.model_reloads = Counter("vigil_model_reloads", "Model file reloads by result.",
                                     ["result"], registry=r)
        for result in ("success", "failure"):
            self.model_reloads.labels(result)

        self._operations(r)
        self._recording(r)

    def _operations(self, r: CollectorRegistry) -> None:
        """The operations loop: CMMS events, operator commands, alarm management, accounting."""
        self.events = Counter("vigil_events", "CMMS events received, by kind.", ["event"], registry=r)
        for e in EVENT_KINDS:
            self.events.labels(e)
        self.commands = Counter("vigil_commands", "Operator commands, by command and result.",
                                ["command", "result"], registry=r)
        for c in COMMANDS:
            for res in COMMAND_RESULTS:
                self.commands.labels(c, res)
        self.alerts_suppressed = Counter(
            "vigil_alerts_suppressed",
            "Level transitions not published, by why (maintenance, shelved, flood).",
            ["reason"], registry=r)
        for why in SUPPRESSED_BY:
            self.alerts_suppressed.labels(why)
        self.assets_in_maintenance = Gauge("vigil_assets_in_maintenance",
                                           "Assets out of service for maintenance.", registry=r)
        self.assets_shelved = Gauge("vigil_assets_shelved", "Assets whose alarms are shelved.", registry=r)
        self.alarm_floods = Counter("vigil_alarm_floods", "Alarm floods that began.", registry=r)
        self.alarm_flood_active = Gauge("vigil_alarm_flood_active", "1 while an alarm flood lasts.",
                                        registry=r)
        self.alarm_rate = Gauge("vigil_alarms_in_flood_window",
                                "Alarms raised within the flood window (event time).", registry=r)
        self.chattering_assets = Gauge("vigil_chattering_assets",
                                       "Assets whose level changes too often (chattering).", registry=r)
        self.lead_time = Histogram(
            "vigil_alert_lead_time_seconds",
            "From the first alert within the horizon to the failure it warned of (event time).",
            ["model"], buckets=_LEAD_BUCKETS, registry=r)
        self.failures_missed = Counter("vigil_failures_missed",
                                       "Failures with no alert within the horizon before them.",
                                       ["model"], registry=r)
        self.false_alarms = Counter("vigil_false_alarms",
                                    "Alerts with no failure or repair within their horizon.", ["model"],
                                    registry=r)
        self.true_alarms = Counter(
            "vigil_true_alarms", "Failures and repairs an alert warned of within its horizon (each once).",
            ["model"], registry=r)
        for m in MODELS:
            self.lead_time.labels(m)
            self.failures_missed.labels(m)
            self.false_alarms.labels(m)
            self.true_alarms.labels(m)
        self.drift_psi = Gauge("vigil_input_drift_psi",
                               "Population stability index of recent inputs against training, per channel.",
                               ["channel"], registry=r)
        self.refit_recommended = Gauge("vigil_refit_recommended",
                                       "1 when input drift passes [drift] psi_threshold.", registry=r)
        self.event_time = Gauge("vigil_event_time_seconds",
                                "The newest event time scored (unix time): the clock shelves, floods and "
                                "alert horizons run on.", registry=r)
        self.shadow_info = Gauge("vigil_shadow_model_info", "The shadow model scored beside the live one.",
                                 ["version"], registry=r)
        self._learning(r)

    def _learning(self, r: CollectorRegistry) -> None:
        """The learning loop: refits, candidates, trials, promotions and rollbacks (agent.trial)."""
        self.candidates = Counter("vigil_model_candidates", "Candidate models by what became of them.",
                                  ["result"], registry=r)
        for res in CANDIDATE_RESULTS:
            self.candidates.labels(res)
        self.promotions = Counter("vigil_model_promotions", "Shadow models promoted to live, by why.",
                                  ["reason"], registry=r)
        for why in PROMOTED_BY:
            self.promotions.labels(why)
        self.rollbacks = Counter("vigil_model_rollbacks",
                                 "Promoted models replaced again by the model they replaced (did worse).",
                                 registry=r)
        self.refit_running = Gauge("vigil_refit_running", "1 while a refit runs in its child process.",
                                   registry=r)
        self.trial_seconds = Gauge("vigil_model_trial_seconds",
                                   "Event time the shadow model has been on trial (0: none).", registry=r)

    def _recording(self, r: CollectorRegistry) -> None:
        """`[record]`: accepted readings into Parquet files for the next refit (agent.recorder)."""
        self.record_readings = Counter("vigil_record_readings", "Readings written to recording files.",
                                       registry=r)
        self.record_dropped = Counter(
            "vigil_record_dropped", "Accepted readings not recorded, by why (queue_full, write_error, "
            "shutdown).", ["reason"], registry=r)
        for why in RECORD_DROPPED_BY:
            self.record_dropped.labels(why)
        self.record_files_deleted = Counter(
            "vigil_record_files_deleted", "Recording files deleted, oldest first, to stay under "
            "[record] max_bytes.", registry=r)
        self.record_disk_bytes = Gauge("vigil_record_disk_bytes", "Bytes of recording files on disk.",
                                       registry=r)
        self.record_files = Gauge("vigil_record_files", "Recording files on disk.", registry=r)

    def count_readings(self, accepted: int, reasons: Mapping[Reason, int]) -> None:
        """Readings not written go to rejected (bad input), ignored (normal traffic the model has
        no use for) or skipped (another agent's assets)."""
        if accepted:
            self.readings_accepted.inc(accepted)
        for reason, n in reasons.items():
            if reason.is_rejection:
                self.readings_rejected.labels(reason.value).inc(n)
            elif reason.is_ignored:
                self.readings_ignored.labels(reason.value).inc(n)
            else:
                self.readings_skipped.inc(n)

    def set_model(self, version: str, created_at: str = "") -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)
        # An older file without a creation time: the gauge stays where it was.
        with contextlib.suppress(ValueError):
            self.model_created.set(datetime.fromisoformat(created_at).timestamp())
