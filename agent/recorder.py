"""Recording for retraining: accepted readings into rotating, bounded Parquet files (long format).

The worker thread appends each accepted reading to flat `array.array` columns (asset as a
small integer code with a name table, channel as the model's channel index): a few C-level
appends per message, no object per reading. A full buffer (`file_rows` readings, or
`rotate_s` seconds old) is handed through a bounded queue to a writer thread, which writes
it as one Parquet file under a hidden temporary name, fsyncs and renames it, then deletes
the oldest files while the total is over `max_bytes`. If the writer falls behind, a buffer
is dropped and counted rather than ingest ever waiting on a disk.

Layout: `dir/YYYY-MM-DD/part-YYYYMMDDTHHMMSS.ffffffZ-NNNNNN.parquet` (UTC wall time the
buffer was opened), columns `ts` (float64 epoch seconds, as the agent held it), `asset`,
`channel` (strings), `value` (float64). `pyarrow.dataset` and `vigil-train fit --history DIR`
read the folder as one history; names starting with `.` are skipped by both, so a
temporary file left by a crash is never read (and is removed at the next start).
A crash loses at most what is buffered: the open buffer, QUEUE_FILES sealed ones and the one
being written; a clean stop (`close`) writes them.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import queue
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from agent.config import RecordConfig
from agent.errors import ConfigError
from agent.files import fsync_path
from agent.logs import RateLimited
from agent.metrics import Metrics

QUEUE_FILES = 2  # sealed buffers waiting for the writer; beyond that a buffer is dropped
COLUMNS = ["ts", "asset", "channel", "value"]  # training's long format


class Buffer:
    """The readings of one future file, as flat columns.

    Per message (one asset, one event time): `ts`, `asset` code and `count` of readings; per
    reading: `channel` (model channel index into `channels`) and `value`.
    """

    __slots__ = ("asset", "channel", "channels", "codes", "count", "opened", "rows", "ts", "value")

    def __init__(self, channels: Sequence[str], opened: float) -> None:
        self.channels = channels
        self.opened = opened  # wall time, names the file
        self.codes: dict[str, int] = {}
        self.ts = array("d")
        self.asset = array("i")
        self.count = array("I")
        self.channel = array("h")
        self.value = array("d")
        self.rows = 0

    def table(self) -> pa.Table:
        """The buffer in long format, one row per reading in arrival order.

        Names stay dictionary-encoded (codes and a name table) all the way into Parquet, which
        encodes them so anyway: written without the Arrow schema they read back as plain strings.
        """
        counts = np.frombuffer(self.count, dtype=np.uint32)
        ts = np.repeat(np.frombuffer(self.ts, dtype=np.float64), counts)
        codes = np.repeat(np.frombuffer(self.asset, dtype=np.int32), counts)
        assets = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(list(self.codes), pa.string()))
        channels = pa.DictionaryArray.from_arrays(pa.array(np.frombuffer(self.channel, dtype=np.int16)),
                                                  pa.array(self.channels, pa.string()))
        return pa.Table.from_arrays([pa.array(ts), assets, channels,
                                     pa.array(np.frombuffer(self.value, dtype=np.float64))],
                                    names=COLUMNS)


class Recorder:
    """Records accepted readings for the next refit (`[record]`); see the module docstring.

    `add`, `set_channels`, `tick` and `close` are called from the agent's worker thread (close
    after it stopped); disk work happens only on the writer thread that `start` launches.
    """

    def __init__(self, cfg: RecordConfig, directory: Path, channels: Sequence[str], metrics: Metrics,
                 log: Any = None, wall: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"record.dir: cannot create {self.dir}: {exc.strerror}") from exc
        self.max_bytes = cfg.max_bytes
        self.file_rows = cfg.file_rows
        self.rotate_s = cfg.rotate_s
        self.metrics = metrics
        self.log = log or structlog.get_logger("vigil.recorder")
        self._drops_log = RateLimited(self.log)
        self._wall = wall
        self._channels = channels
        self._buf = Buffer(channels, wall())
        self._queue: queue.Queue[Buffer | None] = queue.Queue(QUEUE_FILES)
        self._thread = threading.Thread(target=self._run, name="vigil-recorder", daemon=True)
        # Writer thread only: the files on disk, oldest first, and their total size.
        self._files: list[tuple[str, int]] = []
        self._bytes = 0
        self._seq = 0

    # -- the worker thread -------------------------------------------------------------------

    def add(self, asset: str, ts: float, channels: list[int], values: list[float]) -> None:
        """Record readings of one asset at one event time (`channels`: model channel indices)."""
        b = self._buf
        code = b.codes.get(asset)
        if code is None:
            code = b.codes[asset] = len(b.codes)
        b.ts.append(ts)
        b.asset.append(code)
        b.count.append(len(channels))
        b.channel.fromlist(channels)  # fromlist: twice as fast as extend from a list
        b.value.fromlist(values)
        b.rows += len(channels)
        if b.rows >= self.file_rows:
            self._seal()

    def set_channels(self, channels: Sequence[str]) -> None:
        """The model's channels changed (a hot-swap): what was buffered under the old ones is sealed."""
        if channels != self._channels:
            self._seal()
            self._channels = channels
            self._buf.channels = channels

    def tick(self) -> None:
        """Seal the buffer once it is `rotate_s` old (called about once a second)."""
        now = self._wall()
        if not self._buf.rows:
            self._buf.opened = now  # an empty buffer's age starts with its first reading
        elif now - self._buf.opened >= self.rotate_s:
            self._seal()

    def seal(self) -> None:
        """Hand what is buffered to the writer now (a refit is about to read the recording)."""
        self._seal()

    def settle(self, timeout: float) -> bool:
        """Wait until the writer has written every sealed buffer (any thread); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _seal(self) -> None:
        b, self._buf = self._buf, Buffer(self._channels, self._wall())
        if not b.rows:
            return
        try:
            self._queue.put_nowait(b)
        except queue.Full:
            self.metrics.record_dropped.labels("queue_full").inc(b.rows)
            self._drops_log.warning("recording_dropped", key="queue_full", readings=b.rows,
                                    reason="the recording writer is behind")

    @property
    def pending(self) -> int:
        """Sealed buffers waiting for the writer."""
        return self._queue.qsize()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 2.0) -> bool:
        """Flush: seal what is buffered, let the writer finish, within `timeout` seconds.

        Returns False (and counts what was left unwritten as `shutdown`) if it did not finish.
        """
        deadline = time.monotonic() + timeout
        b, self._buf = self._buf, Buffer(self._channels, self._wall())
        pending: list[Buffer | None] = [b] if b.rows else []
        pending.append(None)  # the writer stops when it gets here
        if self._thread.ident is None:
            self.start()
        for item in pending:
            try:
                self._queue.put(item, timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Full:
                if item is not None:
                    self.metrics.record_dropped.labels("shutdown").inc(item.rows)
                break
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            left = sum(x.rows for x in list(self._queue.queue) if x is not None)
            self.metrics.record_dropped.labels("shutdown").inc(left)
            self.log.error("recording_flush_incomplete", readings_lost=left, timeout_s=timeout)
            return False
        return True

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._scan()
        except OSError as exc:
            self.log.error("recording_scan_failed", dir=str(self.dir), error=str(exc))
        while True:
            b = self._queue.get()
            if b is None:
                self._queue.task_done()
                return
            try:
                self._write(b)
            except Exception:  # a bug here must cost recordings, never the agent
                self.metrics.record_dropped.labels("write_error").inc(b.rows)
                self.log.exception("recording_write_failed", readings=b.rows)
            finally:
                self._queue.task_done()

    def _scan(self) -> None:
        """Take stock of the files already there; remove temporary files a crash left."""
        for tmp in self.dir.glob("*/.part-*.tmp"):
            tmp.unlink(missing_ok=True)
            self.log.warning("recording_partial_file_removed", path=str(tmp))
        for path in self.dir.glob("*/part-*.parquet"):
            self._files.append((path.relative_to(self.dir).as_posix(), path.stat().st_size))
        self._files.sort()
        self._bytes = sum(size for _, size in self._files)
        self._enforce_bound()

    def _name(self, b: Buffer) -> str:
        opened = datetime.fromtimestamp(b.opened, UTC)
        while True:
            self._seq += 1
            rel = f"{opened:%Y-%m-%d}/part-{opened:%Y%m%dT%H%M%S.%f}Z-{self._seq:06d}.parquet"
            if not (self.dir / rel).exists():  # never replace a file of an earlier run
                return rel

    def _write(self, b: Buffer) -> None:
        rel = self._name(b)
        path = self.dir / rel
        # A dot name: pyarrow.dataset (and so training) skips it; the rename makes the file appear whole.
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            if not path.parent.is_dir():
                path.parent.mkdir()
                fsync_path(self.dir)
            pq.write_table(b.table(), tmp, compression="zstd", store_schema=False)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before the name says the file is whole
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_path(path.parent)
            size = path.stat().st_size
        except (OSError, pa.ArrowException) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self.log.error("recording_write_failed", path=str(path), readings=b.rows, error=str(exc))
            self.metrics.record_dropped.labels("write_error").inc(b.rows)
            return
        bisect.insort(self._files, (rel, size))
        self._bytes += size
        self._enforce_bound()
        # Counted after the bound is kept and the gauges set, so the count never runs ahead of the disk.
        self.metrics.record_readings.inc(b.rows)

    def _enforce_bound(self) -> None:
        """Delete the oldest files until the total is within `max_bytes`."""
        deleted, freed = 0, 0
        while self._bytes > self.max_bytes and self._files:
            rel, size = self._files.pop(0)
            path = self.dir / rel
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self.log.error("recording_delete_failed", path=str(path), error=str(exc))
            self._bytes -= size
            deleted += 1
            freed += size
            with contextlib.suppress(OSError):  # a day's folder goes with its last file
                path.parent.rmdir()
        if deleted:
            self.metrics.record_files_deleted.inc(deleted)
            self.log.info("recording_files_deleted", files=deleted, bytes=freed, kept_bytes=self._bytes,
                          max_bytes=self.max_bytes)
        self.metrics.record_disk_bytes.set(self._bytes)
        self.metrics.record_files.set(len(self._files))
