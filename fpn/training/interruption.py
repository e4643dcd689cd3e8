"""Spot interruptions: a stop request the training loop reads at each step boundary.

Two things raise it (docs/cluster.md, "Spot interruptions"):

- ``SIGTERM`` (what a spot handler or ``kill`` delivers), where a handler can be installed (the
  process's main thread; Ray runs the train function in another thread and handles SIGTERM
  itself, so inside a Ray worker the poller below is what counts);
- :class:`SpotNoticePoller`, a daemon thread polling the EC2 instance-metadata spot notice
  (IMDSv2: ``PUT /latest/api/token``, then ``GET /latest/meta-data/spot/instance-action``; 404 is
  no notice, 200 with ``{"action": ...}`` is one) every few seconds. It runs only where
  ``TrainConfig.spot_notice_url`` or ``$FPN_SPOT_NOTICE_URL`` names the endpoint (the cluster's
  spot nodes); off EC2 nothing polls.

A request is a flag, never a signal into the loop: the current optimizer step finishes, the loop
checkpoints (:mod:`fpn.training.worker`) and stops with :class:`TrainingInterrupted`, and Ray
Train's restart resumes from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

__all__ = ["SPOT_NOTICE_ENV", "SPOT_NOTICE_URL", "SpotNoticePoller", "StopRequest",
           "TrainingInterrupted", "install_sigterm_handler", "spot_notice_url"]

log = logging.getLogger(__name__)

#: the EC2 instance-metadata spot notice (only reachable on EC2)
SPOT_NOTICE_URL = "http://169.254.169.254/latest/meta-data/spot/instance-action"
#: set on the cluster's nodes to turn the poller on (the value is the notice URL)
SPOT_NOTICE_ENV = "FPN_SPOT_NOTICE_URL"


class TrainingInterrupted(RuntimeError):
    """The loop checkpointed at a step boundary and stopped on a stop request."""


class StopRequest:
    """A thread-safe flag with the reason it was raised."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def install_sigterm_handler(stop: StopRequest) -> bool:
    """Make SIGTERM raise ``stop`` instead of killing the process mid-step; True when installed
    (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.request("SIGTERM"))
    return True


def spot_notice_url(configured: str | None) -> str | None:
    """The notice URL to poll: the config's, else ``$FPN_SPOT_NOTICE_URL``, else None (off)."""
    return configured or os.environ.get(SPOT_NOTICE_ENV) or None


class SpotNoticePoller(threading.Thread):
    """Polls ``url`` every ``interval`` seconds and raises ``stop`` on a termination notice."""

    def __init__(self, url: str, stop: StopRequest, interval: float = 5.0, timeout: float = 2.0):
        super().__init__(name="fpn-spot-notice", daemon=True)
        self.url, self.stop_request, self.interval, self.timeout = url, stop, interval, timeout
        parts = urlsplit(url)
        self.token_url = f"{parts.scheme}://{parts.netloc}/latest/api/token"
        self._halt = threading.Event()
        # the metadata service is link-local: never through an HTTP proxy
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _token(self) -> str | None:
        req = urllib.request.Request(self.token_url, method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, OSError):
            return None  # IMDSv1 only, or no metadata service: try without a token

    def check_once(self) -> dict | None:
        """The notice (parsed JSON) when there is one, else None."""
        token = self._token()
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        try:
            with self._opener.open(urllib.request.Request(self.url, headers=headers),
                                   timeout=self.timeout) as resp:
                body = resp.read().decode()
        except (urllib.error.URLError, OSError):  # 404: no notice; unreachable: nothing to do
            return None
        try:
            notice = json.loads(body)
        except ValueError:
            return None
        return notice if isinstance(notice, dict) and notice.get("action") else None

    def run(self) -> None:
        while not self._halt.is_set():
            notice = self.check_once()
            if notice is not None:
                log.warning("spot interruption notice: %s", notice)
                print(f"[fpn] spot interruption notice {notice}: checkpointing at the next "
                      "step", flush=True)
                self.stop_request.request(f"spot notice {notice}")
                return
            self._halt.wait(self.interval)

    def halt(self) -> None:
        self._halt.set()
