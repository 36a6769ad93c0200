"""Cluster-mode writes of kvsched's decisions onto pods.

* `record_placement` (the shipped profile, no bindVerb): kube-scheduler bound the pod; the
  `kvsched.io/predicted-gpus` and `kvsched.io/placement` annotations are merged onto it
  afterwards, from the effect writer, with the pod's UID as a precondition (a pod recreated
  under the same name is not annotated by mistake).
* `bind` (a configuration with a bindVerb): one pods/binding write carrying both annotations,
  which the API server copies onto the pod as it binds it, so the prediction is durable
  exactly when the binding is.
* `reserve`: a gang member's reservation annotation.

Either way the prediction on the pod is how a restarted extender rebuilds its GPU map and what
the controller mirrors into NodeInventory where no node agent reports the kubelet's truth.
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

    def record_placement(
        self, namespace: str, name: str, uid: str, prediction: GpuPrediction, placement: str
    ) -> None:
        annotations: dict[str, str | None] = {
            A_PREDICTED_GPUS: prediction.encode(),
            A_PLACEMENT: placement,
        }
        try:
            self.api.annotate_pod(namespace, name, annotations, uid=uid)
        except NotFoundError:
            log.debug("pod %s/%s is gone: its placement is not recorded", namespace, name)
        except KubeError as exc:
            if exc.status in (409, 422):
                # The UID precondition: the name is another pod's now.
                log.debug("pod %s/%s was replaced: its placement is not recorded", namespace, name)
                return
            raise BindError(f"cannot record placement on pod {namespace}/{name}: {exc}") from None

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
