"""The courier: the one thread of `denoise` that sends responses and asks about cancellation (portrait/serving/courier.py)."""

from __future__ import annotations

import threading
import time

import pytest

from portrait.serving.courier import Courier


def wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture
def courier():
    c = Courier(poll_interval=0.01)
    yield c
    c.stop()


def test_sends_run_in_order_on_the_courier_thread(courier):
    sent, threads = [], set()

    def send(tag):
        def run():
            sent.append(tag)
            threads.add(threading.current_thread().name)
        return run
    for i in range(50):
        courier.post("a" if i % 2 else "b", send(i))
    courier.stop()
    assert sent == list(range(50))
    assert threads == {"courier"}


def test_progress_waiting_for_the_same_key_is_replaced_by_the_newest(courier):
    gate, sent = threading.Event(), []
    courier.post("x", gate.wait)  # holds the thread while the progress messages queue up
    for step in range(1, 6):
        courier.post_progress("a", lambda step=step: sent.append(("a", step)))
        courier.post_progress("b", lambda step=step: sent.append(("b", step)))
    courier.finish("a", lambda: sent.append(("a", "final")))
    gate.set()
    courier.stop()
    # one progress per key (the newest), in the order the keys first queued, then the final after it
    assert sent == [("a", 5), ("b", 5), ("a", "final")]


def test_a_failed_send_cancels_its_key_only(courier):
    def broken():
        raise RuntimeError("the client's stream is gone")
    courier.post_progress("a", broken)
    courier.post("b", lambda: None)
    wait_for(lambda: courier.cancelled("a"))
    assert not courier.cancelled("b")


def test_watched_checks_are_polled_off_the_caller_thread_and_stop_with_the_final_send(courier):
    calls, threads = [], set()
    flag = threading.Event()

    def check():
        calls.append(1)
        threads.add(threading.current_thread().name)
        return flag.is_set()
    courier.watch("a", check)
    wait_for(lambda: len(calls) >= 3)
    assert not courier.cancelled("a")
    flag.set()
    wait_for(lambda: courier.cancelled("a"))
    assert threads == {"courier"}
    courier.finish("a", lambda: None)
    wait_for(lambda: not courier.cancelled("a"))  # forgotten
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n, "a finished key is still polled"


def test_a_broken_check_cancels_its_request(courier):
    def check():
        raise RuntimeError("no parent")
    courier.watch("a", check)
    courier.watch("b", lambda: False)
    wait_for(lambda: courier.cancelled("a"))
    assert not courier.cancelled("b")


def test_a_key_is_never_polled_once_its_final_send_has_started():
    """Triton frees a request with its final response (is_cancelled on it then crashes the server): no poll of the
    key may come between the final send and the end, even when the poll deadline passes during that send."""
    c = Courier(poll_interval=0.001)
    events = []
    c.watch("a", lambda: events.append("poll") or False)
    wait_for(lambda: "poll" in events)
    c.post_progress("a", lambda: time.sleep(0.01))
    c.finish("a", lambda: events.append("final") or time.sleep(0.02))
    c.post("b", lambda: time.sleep(0.02))  # the thread goes on (and would poll) after the final send
    c.stop()
    assert "final" in events and "poll" not in events[events.index("final"):]


def test_poll_interval_must_be_positive():
    with pytest.raises(ValueError, match="poll_interval"):
        Courier(poll_interval=0)
