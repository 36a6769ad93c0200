"""Cluster-mode bind: one pods/binding write that also records kvsched's GPU prediction.

The binding carries the `kvsched.io/predicted-gpus` and `kvsched.io/placement` annotations,
which the API server copies onto the pod as it binds it: the prediction is durable exactly
when the binding is (it is how a restarted extender rebuilds its GPU map), with one API call
per pod.
"""

from __future__ import annotations

import logging

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.core.demand import A_PLACEMENT, A_PREDICTED_GPUS, A_RESERVATION
from scheduler.state.contracts import BindError
from scheduler.state.kube import ClusterApi, ConflictError, KubeError, NotFoundError
from scheduler.state.objects import PodRecord, pod_record

log = logging.getLogger(__name__)


class ApiBinder:
    def __init__(self, api: ClusterApi) -> None:
        self.api = api

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        """Write (or with None remove) a gang member's reservation on the pod itself, where a
        restarted extender will find it."""
        value = reservation.encode() if reservation is not None else None
        try:
            self.api.annotate_pod(namespace, name, {A_RESERVATION: value})
        except NotFoundError:
            if reservation is not None:
                raise BindError(f"pod {namespace}/{name} no longer exists") from None
        except KubeError as exc:
            raise BindError(f"cannot record reservation on pod {namespace}/{name}: {exc}") from None

    def bind(
        self, pod: PodRecord, prediction: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        node = prediction.node
        annotations = {A_PREDICTED_GPUS: prediction.encode(), A_PLACEMENT: placement}
        try:
            self.api.bind_pod(pod.namespace, pod.name, pod.uid, node, annotations)
        except ConflictError:
            # A retry of a bind that went through (kube-scheduler retries on timeouts), or
            # someone else bound the pod: the pod itself says which.
            current = pod_record(self.api.get_pod(pod.namespace, pod.name))
            if current.uid == pod.uid and current.node == node:
                log.info("pod %s was already bound to %s", pod.ref, node)
                return current.prediction
            raise BindError(
                f"pod {pod.ref} is bound to {current.node or 'nothing'} (uid {current.uid}), "
                f"not {node}"
            ) from None
        except NotFoundError:
            raise BindError(f"pod {pod.ref} no longer exists") from None
        except KubeError as exc:
            raise BindError(f"binding pod {pod.ref} to {node} failed: {exc}") from None
        log.info("bound %s to %s gpus=%s (%s)", pod.ref, node, list(prediction.indices), placement)
        return None
