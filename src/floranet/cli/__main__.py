"""``python -m floranet.cli``."""

from floranet.cli import console_main

console_main()
