"""Print the README's options table from pgsluice.config.OPTIONS (tests/test_docs.py keeps them in sync)."""

from __future__ import annotations

from pgsluice.config import OPTIONS


def _default(value: object, unit: str) -> str:
    if value == "":
        return "unset: libpq's `PG*`"
    if unit == "bytes" and isinstance(value, int) and value % 1024**2 == 0:
        return f"{value // 1024**2}MiB"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def options_table() -> str:
    """Markdown: flag, environment, default, unit, meaning."""
    lines = ["| flag | environment | default | unit | meaning |", "| --- | --- | --- | --- | --- |"]
    for opt in OPTIONS:
        env = " / ".join(f"`{e}`" for e in (opt.env, *opt.standard_env) if e)
        flag = f"`{opt.flag}`" + (f" / `--no-{opt.flag[2:]}`" if opt.boolean else "")
        lines.append(f"| {flag} | {env} | {_default(opt.default, opt.unit)} | {opt.unit} | {opt.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(options_table())
