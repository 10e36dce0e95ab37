"""Installed home of the repository's eval/ and train/ command-line modules (see jaxfault.__main__)."""
