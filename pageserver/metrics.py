"""Prometheus metrics of the process (prometheus-client, default registry).

Metric objects are module globals because prometheus-client's registry is per process;
label children used on hot paths are resolved once here rather than per call.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

#: The VirtualFile operation names of SPEC section 6.
IO_OPERATIONS = (
    "open",
    "open-after-replace",
    "close",
    "close-by-replace",
    "read",
    "write",
    "fsync",
    "metadata",
)

IO_OPERATION_SECONDS = Histogram(
    "pageserver_io_operations_seconds",
    "Time spent in VirtualFile operations, by operation",
    ["operation"],
    buckets=(
        0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
    ),
)
IO_OPERATION_BYTES = Counter(
    "pageserver_io_operations_bytes_total",
    "Bytes read and written through VirtualFile",
    ["operation"],
)
VIRTUAL_FILE_OPEN_SLOTS = Gauge(
    "pageserver_virtual_file_open_slots",
    "VirtualFile slots that currently hold an open file descriptor",
)
IO_ENGINE_KIND = Info("pageserver_io_engine", "The io engine this process uses")

OP_SECONDS = {op: IO_OPERATION_SECONDS.labels(operation=op) for op in IO_OPERATIONS}
BYTES_READ = IO_OPERATION_BYTES.labels(operation="read")
BYTES_WRITTEN = IO_OPERATION_BYTES.labels(operation="write")

# -- ingest, flush, layers, LSNs (SPEC section 8) -------------------------------------------

INGEST_RECORDS = Counter("pageserver_ingest_records_total", "Records accepted by put")
INGEST_BYTES = Counter("pageserver_ingest_bytes_total", "Value bytes accepted by put")
FLUSH_SECONDS = Histogram(
    "pageserver_flush_seconds",
    "Duration of flushing one frozen in-memory layer to an L0 delta layer",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
FLUSH_BYTES = Counter("pageserver_flush_bytes_total", "Bytes of layer files written by flushes")
LAYER_COUNT = Gauge(
    "pageserver_layers", "Historic layers per timeline", ["tenant_id", "timeline_id", "kind"]
)
LAST_RECORD_LSN = Gauge(
    "pageserver_last_record_lsn", "last_record_lsn per timeline", ["tenant_id", "timeline_id"]
)
DISK_CONSISTENT_LSN = Gauge(
    "pageserver_disk_consistent_lsn",
    "disk_consistent_lsn per timeline",
    ["tenant_id", "timeline_id"],
)

GC_CUTOFF_LSN = Gauge(
    "pageserver_gc_cutoff_lsn",
    "gc_cutoff_lsn per timeline: reads below it answer lsn_too_old (SPEC section 11)",
    ["tenant_id", "timeline_id"],
)
GC_LAYERS_REMOVED = Counter(
    "pageserver_gc_layers_removed_total", "Layer files removed by garbage collection"
)

# -- remote storage (SPEC section 10) ----------------------------------------------------------

REMOTE_CONSISTENT_LSN = Gauge(
    "pageserver_remote_consistent_lsn",
    "disk_consistent_lsn of the last index uploaded, per timeline",
    ["tenant_id", "timeline_id"],
)
REMOTE_UPLOAD_BYTES = Counter(
    "pageserver_remote_upload_bytes_total", "Bytes of layer and index objects uploaded"
)
REMOTE_UPLOADS = Counter(
    "pageserver_remote_uploads_total", "Objects uploaded, by kind", ["kind"]
)
REMOTE_DELETIONS = Counter("pageserver_remote_deletions_total", "Objects deleted remotely")
REMOTE_DOWNLOAD_BYTES = Counter(
    "pageserver_remote_download_bytes_total", "Bytes of layer files downloaded on demand"
)
REMOTE_DOWNLOAD_SECONDS = Histogram(
    "pageserver_remote_download_seconds",
    "Duration of one on-demand layer download (fetch, write, fsync, rename)",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REMOTE_ERRORS = Counter(
    "pageserver_remote_errors_total", "Failed object storage requests (each is retried)"
)
RESIDENT_LAYER_BYTES = Gauge(
    "pageserver_resident_layer_bytes", "Bytes of layer files present on local disk"
)
LAYER_EVICTIONS = Counter(
    "pageserver_layer_evictions_total", "Local layer copies deleted by eviction"
)
