"""``cdi-audit serve``: a local model behind the cdi-audit-variation/1 HTTP protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cdi_audit.cli.app import guarded, run_stage
from cdi_audit.cli.options import (
    AdapterOption,
    AllowPickleOption,
    CompileOption,
    DebugOption,
    DeviceOption,
    DtypeOption,
    GuidanceOption,
    ModelConfigOption,
    model_spec,
)
from cdi_audit.console import StageProgress, shown, stderr_console
from cdi_audit.errors import SettingsProblem


@guarded
def serve(
    model: Annotated[Path, typer.Argument(
        metavar="MODEL", show_default=False,
        help="The local model to serve: a diffusers pipeline folder or a single-file .safetensors checkpoint.")],
    model_config: ModelConfigOption = None,
    adapter: AdapterOption = None,
    guidance: GuidanceOption = None,
    allow_pickle: AllowPickleOption = False,
    host: Annotated[str, typer.Option(
        metavar="ADDRESS", help="Address to listen on. Keep the loopback default unless others must reach it: the "
                                "server has no authentication of its own.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT",
                                      help="Port to listen on (0: any free port; the URL is printed).")] = 8000,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    compile_network: CompileOption = False,
    debug: DebugOption = False,
) -> None:
    """Serve a local model through the cdi-audit-variation/1 HTTP protocol (image in, variation out).

    Auditors then run 'cdi-audit check ... --endpoint URL' with black-box access only. Stop with Ctrl-C.
    """
    from cdi_audit.blackbox.server import VariationServer, is_loopback
    from cdi_audit.blackbox.variation import LocalVariation
    from cdi_audit.models.spec import Machine

    console = stderr_console()

    def load(progress: StageProgress) -> LocalVariation:
        spec = model_spec(model, model_config, adapter, allow_pickle, guidance)
        target = spec.load(Machine(device, dtype, compile_network))
        target.load_weights()  # a broken model fails now, not at the first request
        return LocalVariation(target)

    backend = run_stage(load, console)
    try:
        server = VariationServer((host, port), backend)
    except OSError as error:
        raise SettingsProblem(f"Cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                              "or --host.") from None
    if not is_loopback(host):
        console.print(f"[yellow]warning[/] listening on {shown(host)}, beyond this machine, without authentication.")
    info = backend.info
    console.print(f"serving {shown(model)} ({info.family}, {info.sample_size} px, {info.conditioning} conditioning) at "
                  f"[bold]{server.url}[/] (cdi-audit-variation/1); Ctrl-C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print(f"stopped after {server.calls} call(s)")
    finally:
        server.server_close()
