"""A long-running ClientApp process for a SuperNode started with ``--isolation process``.

Why: Flower 1.42 runs every ClientApp message as one task, and its ``flwr-clientapp`` process (started
per task by the SuperNode's SuperExec in the default ``--isolation subprocess`` mode, or by a
``flower-superexec`` of one's own in ``--isolation process`` mode) handles one task and exits. A
shebench node then pays, per message, Python and torch imports, the model load and the client role's
unpickling: a deployment of the default scenario took 5x its in-process wall. Flower has no mode that
keeps a ClientApp process between messages, but in ``--isolation process`` mode it leaves the
launching of task processes to whoever serves the SuperNode's Runtime API. This module is that
server-side partner: it claims the node's ClientApp tasks (``AcquireTask``) and runs each in this one
process, through the same Runtime API calls and in the same order as ``flwr-clientapp`` (task input,
message, the ClientApp, reply, task output, heartbeats meanwhile). So the ClientApp object and what
its module keeps (``flower_client.FOLDER_ROLES``: the run's role, model, data and LoRA host) stay warm
from one message to the next.

It changes nothing the SuperLink or the server sees: the node's messages, their contents and their
order are the ClientApp's, as with ``flwr-clientapp``; only the process that computes them lives
longer. It runs ClientApp tasks only, one at a time (as the SuperNode hands them out), and logs a
line per task: its message type, status, duration, wall-clock start and end (two nodes' overlap shows
in them) and the state folder's lock notes (``flower_client.FolderRoles``: shared or exclusive, stored).

The SuperNode beside it is Flower's ``flower-supernode``, started through the suite's launcher
(``benchmark.engines.flower_supernode``: the same arguments, the SuperNode loop's 3 s idle wait and
0.5 s reply polls capped at ``--idle-poll-s``); plain ``flower-supernode`` works too, slower.

    python -m benchmark.engines.flower_supernode --isolation process --port 9094 --superlink SERVER:9092 ... &
    python -m benchmark.engines.flower_worker --runtime-api-address 127.0.0.1:9094 --insecure
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
from flwr.app import Context, Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.config import get_project_dir
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from benchmark.engines.flower_pulls import backoff

POLL_S = 0.1  # between claims of the SuperNode's next task (Flower's SuperExec waits 1 s)
READY = "shebench worker: serving ClientApp tasks"  # printed once the worker takes tasks


class Worker:
    """Claims the ClientApp tasks of one SuperNode's Runtime API and runs them here, one at a time."""

    def __init__(self, address: str, root_certificates: bytes | None, insecure: bool) -> None:
        self.address, self.root_certificates, self.insecure = address, root_certificates, insecure
        self.installed: set[str] = set()  # FAB hashes installed by this process
        self.stop = threading.Event()

    def client(self, *interceptors: object, retry: bool = True) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure, root_certificates=self.root_certificates,
            interceptors=list(interceptors), retry_invoker=make_simple_http_retry_invoker() if retry else None)

    def serve(self, give_up_s: float) -> None:
        """Take tasks until stopped, or until the Runtime API has been unreachable for ``give_up_s``."""
        claims = self.client(RuntimeVersionHttpInterceptor(component_name="SuperExec"), retry=False)
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        reachable, announced = time.monotonic(), False
        try:
            while not self.stop.is_set():
                try:
                    res = claims.AcquireTask(request)
                except httpx.TransportError:
                    if time.monotonic() - reachable > give_up_s:
                        raise SystemExit(f"shebench worker: no Runtime API at {self.address} for {give_up_s:.0f}s") from None
                    self.stop.wait(0.5)
                    continue
                reachable = time.monotonic()
                if not announced:
                    print(READY, self.address, flush=True)
                    announced = True
                if res.HasField("task") and res.token:
                    self.run_task(res.token)
                else:
                    self.stop.wait(POLL_S)
        finally:
            claims.close()

    def run_task(self, token: str) -> None:
        """One ClientApp task, as ``flwr-clientapp`` runs it, minus the process: a failing ClientApp
        answers with an error message and the worker takes the next task."""
        client = self.client(RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                             RuntimeTokenHttpInterceptor(token))
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message: Message | None = None
        context: Context | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        t0, started = time.perf_counter(), time.time()
        try:
            message, context, run, fab = pull_task_input(client)
            if fab.hash_str not in self.installed or not get_project_dir(run.fab_id, run.fab_version, fab.hash_str).exists():
                install_from_fab(fab.content, skip_prompt=True)
                self.installed.add(fab.hash_str)
            app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
                run.fab_id, run.fab_version, fab.hash_str)
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # noqa: BLE001 (the ClientApp's failure is the reply, as in flwr-clientapp)
            details = f"{type(ex)}:<'{ex}'>"
            print(f"shebench worker: ClientApp raised {details}", file=sys.stderr, flush=True)
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            finally:
                push_task_output(client=client, context=context, sub_status=status, details=details)
                heartbeat.stop()
                client.close()
                kind = message.metadata.message_type if message is not None else "?"
                from benchmark.engines.flower_client import role_notes  # imported by main already

                notes = role_notes()  # the op's lock on the state folder, and what it stored
                print(f"shebench worker: ran {kind} ({status}) in {time.perf_counter() - t0:.2f}s "
                      f"[{started:.3f} -> {time.time():.3f}]" + (f" ({notes})" if notes else ""), flush=True)


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The task's context, run, FAB and message, as ``flwr-clientapp`` pulls them but retrying the
    message's objects after 10 ms (doubling up to 200 ms) instead of 1 s: the SuperNode hands out a
    task as soon as the message's header arrived, while it still pulls the contents from the SuperLink
    (a process started per task never noticed Flower's 1 s; a worker that claims within 100 ms does)."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, **backoff())
    message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr-clientapp sets it
    return message, context, run, fab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True,
                        help="the SuperNode's Runtime API (its --host and --port), e.g. 127.0.0.1:9094")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API (same machine)")
    tls.add_argument("--root-certificates", type=Path,
                     help="CA certificate (PEM) of the Runtime API's --ssl-certfile (the SuperNode's --ssl-ca-certfile)")
    parser.add_argument("--give-up-s", type=float, default=60.0,
                        help="exit once the Runtime API has been unreachable this long (the SuperNode stopped)")
    args = parser.parse_args(argv)
    # the suite's ClientApp and its model code, imported once before the first task
    importlib.import_module("benchmark.engines.flower_client")
    importlib.import_module("benchmark.federation.assets")
    certificates = None if args.root_certificates is None else args.root_certificates.read_bytes()
    worker = Worker(args.runtime_api_address, certificates, args.insecure)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.serve(args.give_up_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
