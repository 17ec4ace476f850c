"""Tools beside the CLI: ``tadlora status`` (a gRPC client of the daemons), ``tadlora plot``, and the
developer tools (regenerating the wire protocol's code, the README's settings table)."""
