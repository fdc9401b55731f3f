"""air_gap for the command line: every command but `serve` runs under the same outbound guard the server
installs (governance/air_gap.py); `ingest` of a URL on a host the guard refuses fails up front with a
message saying so, and nothing is looked up or connected to (the test-wide network guard, which sees every
attempt that gets past ours, sees none); `models pull` is refused."""
from __future__ import annotations

import argparse
import socket

import pytest

import network_guard
from nlweb_local.cli.main import main
from nlweb_local.core.errors import SourceError
from nlweb_local.governance.air_gap import AirGapRefused
from stand_ins import service_settings


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLWEB_LOCAL_SERVER__PORT", "1")  # (no server there: commands run in-process)
    path = tmp_path / "nlweb-local.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nair_gap: true\n")
    return path


@pytest.mark.parametrize("url", ["https://example.com/sitemap.xml", "http://203.0.113.9:8080/feed.xml",
                                 "http://[2001:db8::1]/page.html"])
def test_ingest_of_a_url_off_this_machine_under_air_gap_fails_without_a_connection(cfg, capsys, url):
    lookups: list[str] = []
    real = socket.getaddrinfo

    def spy(host, *a, **kw):
        lookups.append(str(host))
        return real(host, *a, **kw)

    socket.getaddrinfo = spy
    try:
        assert main(["--config", str(cfg), "ingest", url, "--site", "x", "--no-progress"]) != 0
    finally:
        socket.getaddrinfo = real
    err = capsys.readouterr().err
    assert "air_gap is on: nlweb-local ingest does not fetch " + url in err
    assert "neither loopback nor a configured local engine" in err
    assert lookups == [] and network_guard.take_refused() == []  # no name looked up, no connection tried
    assert socket.getaddrinfo is real  # (the command's guard is gone again)


def test_the_cli_guard_refuses_what_a_crawl_meets_off_this_machine(tmp_path):
    """Installed for a command, the guard also stops fetches the command makes later (a sitemap's or feed's
    entries, a redirect): the ingest fetcher gets the air gap's refusal, not a connection."""
    from nlweb_local.cli.air_gap import install
    from nlweb_local.ingest.fetch import Fetcher

    settings = service_settings(tmp_path)
    settings.air_gap = True
    settings.ingest.allow_private_networks = True
    args = argparse.Namespace(command="ingest")
    guard = install(settings, args)
    try:
        assert args.outbound_guard is guard
        with pytest.raises(SourceError, match="air_gap: outbound connections to 203.0.113.7:80 are refused"):
            Fetcher(settings.ingest).fetch("http://203.0.113.7/entry.html")
        with pytest.raises(AirGapRefused):
            socket.getaddrinfo("example.org", 443)
    finally:
        guard.uninstall()
    assert network_guard.take_refused() == []  # the air gap refused them before anything left


def test_ingest_from_this_machine_or_a_configured_local_engine_host_is_allowed(tmp_path):
    from nlweb_local.cli.air_gap import check_fetch

    settings = service_settings(tmp_path, {"name": "gpu", "engine": "vllm", "model": "m", "url": "http://10.0.0.5:8000/v1"})
    settings.air_gap = True
    args = argparse.Namespace()
    for url in ("http://127.0.0.1:8080/items.jsonl", "http://localhost/sitemap.xml", "http://[::1]:9000/feed",
                "http://10.0.0.5:8081/catalog.jsonl"):
        check_fetch(settings, args, url, "nlweb-local ingest")  # allowed: no error
    with pytest.raises(SourceError, match="10.0.0.6 is neither loopback"):
        check_fetch(settings, args, "http://10.0.0.6/catalog.jsonl", "nlweb-local ingest")
    settings.air_gap = False
    check_fetch(settings, args, "https://example.com/x", "nlweb-local ingest")  # no air gap: not this check's business


def test_models_pull_is_refused_under_air_gap(cfg, capsys):
    assert main(["--config", str(cfg), "models", "pull", "llama3.2:1b"]) != 0
    err = capsys.readouterr().err
    assert "air_gap is on: models pull llama3.2:1b is refused" in err
    assert network_guard.take_refused() == []


def test_without_air_gap_no_guard_is_installed(tmp_path):
    from nlweb_local.cli.air_gap import install

    settings = service_settings(tmp_path)
    assert install(settings, argparse.Namespace(command="ingest")) is None
    settings.air_gap = True
    assert install(settings, argparse.Namespace(command="serve")) is None  # serve installs its own, after binding
