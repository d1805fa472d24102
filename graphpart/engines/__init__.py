"""Engines: one step driver over a schedule, and the transports that move its calls and tensors."""

from graphpart.engines.cluster import call_seconds, describe_cluster, start_ray, stop_ray
from graphpart.engines.data_parallel import DP_TRANSPORTS, DataParallel
from graphpart.engines.engine import (
    TRANSPORT_CHOICES,
    Engine,
    StepResult,
    check_virtual,
    resolve_transport,
    virtual_transports,
)
from graphpart.engines.measure import measured_costs
from graphpart.engines.trainable import Trainable
from graphpart.engines.transports import TRANSPORTS, removed_note
from graphpart.engines.transports.ring import PLACEMENTS as DP_PLACEMENTS
from workers.backends import DEVICES, check_device, host_array
from workers.buckets import critical_path
from workers.channels import Channel, ChannelInbox, ChannelName
from workers.channels import unlink as unlink_channel
from workers.hwm import read_hwm, reset_hwm
from workers.kernels.blas import describe as describe_blas
from workers.kernels.blas import providers as blas_providers
from workers.ledger import Ledger
from workers.ring import ring_allreduce
from workers.stats import Rss, StageStats, by_process

__all__ = [
    "Channel",
    "critical_path",
    "host_array",
    "blas_providers",
    "describe_blas",
    "ChannelInbox",
    "ChannelName",
    "unlink_channel",
    "DEVICES",
    "DP_PLACEMENTS",
    "DP_TRANSPORTS",
    "DataParallel",
    "TRANSPORTS",
    "TRANSPORT_CHOICES",
    "check_device",
    "Engine",
    "Ledger",
    "ring_allreduce",
    "Rss",
    "StageStats",
    "by_process",
    "StepResult",
    "Trainable",
    "measured_costs",
    "read_hwm",
    "reset_hwm",
    "check_virtual",
    "removed_note",
    "resolve_transport",
    "virtual_transports",
    "start_ray",
    "stop_ray",
    "call_seconds",
    "describe_cluster",
]
