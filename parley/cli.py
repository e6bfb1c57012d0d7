"""The ``parley`` command: serve, dsp-serve, call, doctor, personas, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from parley.config import Settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"parley {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the API, the web page and the calls")
    s.add_argument("--host", default=None, help="listen address (PARLEY_HOST)")
    s.add_argument("--port", type=int, default=None, help="port (PARLEY_PORT)")
    s.add_argument("--workers", type=int, default=None, help="worker processes (PARLEY_WORKERS; 0 = one per core)")
    s.add_argument("--persona", default=None, help="default persona (PARLEY_PERSONA)")
    s.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS (PARLEY_TLS_CERT)")
    s.add_argument("--tls-key", default=None, help="PEM private key (PARLEY_TLS_KEY)")
    s.add_argument("--sip-port", type=int, default=None, help="SIP port, UDP and TCP (PARLEY_SIP_PORT; off when unset)")
    s.set_defaults(func=_serve)

    g = sub.add_parser("dsp-serve", help="serve the audio-processing (DSP) service over gRPC")
    g.add_argument("--host", default=None, help="listen address (PARLEY_HOST)")
    g.add_argument("--port", type=int, default=None, help="gRPC port (PARLEY_DSP_PORT)")
    g.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics port; 0 = none")
    g.set_defaults(func=_dsp_serve)

    c = sub.add_parser("call", help="call a server headlessly with a WAV as the microphone")
    c.add_argument("--url", default="http://127.0.0.1:8080")
    c.add_argument("--wav", required=True, type=Path, help="16-bit PCM WAV to say")
    c.add_argument("--persona", default=None)
    c.add_argument("--out", type=Path, default=None, help="write the reply audio here")
    c.add_argument("--turns", type=int, default=1, help="say the WAV this many times, one turn each")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--record", action="store_true", help="consent to the server recording this call")
    c.set_defaults(func=_call)

    d = sub.add_parser("doctor", help="say which backends, models and services are usable")
    d.set_defaults(func=_doctor)

    ps = sub.add_parser("personas", help="list the personas")
    ps.set_defaults(func=_personas)

    b = sub.add_parser("bench", help="run a benchmark; writes bench/results/<name>.json and .png")
    b.add_argument("name", choices=["latency", "capacity", "dsp", "dsp_hop", "memory", "sip", "rooms", "turns", "fuzz",
                                    "churn", "bargein", "all"])
    b.add_argument("--out", type=Path, default=Path("bench/results"))
    b.add_argument("--quick", action="store_true", help="smaller run (CI smoke)")
    b.add_argument("--parts", default=None,
                   help="comma-separated parts of the benchmark's set (turns: real,piper); "
                        "the others keep their last results")
    b.set_defaults(func=_bench)
    return p


def _serve(args: argparse.Namespace) -> int:
    from signaling.server import serve

    settings = Settings.from_env(host=args.host, port=args.port, workers=args.workers, persona=args.persona,
                                 tls_cert=args.tls_cert, tls_key=args.tls_key, sip_port=args.sip_port)
    return serve(settings)


def _dsp_serve(args: argparse.Namespace) -> int:
    from pipeline.dsp.remote.server import serve_forever

    settings = Settings.from_env(host=args.host, dsp_port=args.port)
    return serve_forever(settings, args.metrics_port)


def _call(args: argparse.Namespace) -> int:
    from parley.call.caller import run_call

    logging.basicConfig(level=logging.WARNING)
    if not args.wav.is_file():
        raise ValueError(f"--wav {args.wav}: no such file")
    result = asyncio.run(run_call(args.url, args.wav, args.persona, args.turns, args.out, args.timeout,
                                    record=args.record))
    if args.json:
        print(json.dumps(result))
    else:
        lat = result["latency_ms"]
        print(f"you said:   {result['transcript'] or '(no transcript)'}")
        print(f"agent said: {result['reply_text'] or '(no text)'} [{result['reply_audio_s']} s of audio]")
        print(f"turn latency: {lat['turn']} ms; frames {result['frames']}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from parley.doctor import run_doctor

    return run_doctor(Settings.from_env())


def _personas(args: argparse.Namespace) -> int:
    from personas import load_personas

    for p in load_personas().values():
        print(f"{p.id:12} {p.name:24} {p.description}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from bench import run_benchmarks

    return run_benchmarks(args.name, args.out, quick=args.quick, parts=args.parts)


if __name__ == "__main__":
    sys.exit(main())
