"""The supervisord client gives up on a supervisord that accepts but never answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from videodb.cluster.supervisor import Supervisor
from videodb.errors import NotRunningError
from videodb.layout import StateLayout


def test_a_silent_supervisord_is_an_error_not_a_hang(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    layout.supervisor_socket().parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(layout.supervisor_socket()))
        silent.listen()  # accepts (through the backlog), never reads nor answers
        with pytest.raises(NotRunningError, match="not answering"):
            Supervisor(layout, timeout=0.5).programs()
