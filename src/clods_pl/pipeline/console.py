"""A quiet console: what clods-pl and the user's own code say still shows; Lightning's advertising tip and a
deprecation inside Lightning's own use of torch's pytree (nothing a clods-pl user can act on) do not."""

from __future__ import annotations

import logging
import warnings

TIP_PREFIX = "💡 Tip:"
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


class DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger" notice, printed once per Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIP_PREFIX)


def quiet_console() -> None:
    """Install the filters (idempotent); call once when a clods-pl command starts."""
    import lightning  # noqa: F401,PLC0415  (its loggers get their handlers at import)

    for name in LIGHTNING_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, DropTips) for f in handler.filters):
                handler.addFilter(DropTips())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
