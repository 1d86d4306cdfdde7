"""Policy serving over websockets in the openpi protocol: server, thin client and msgpack-numpy codec.

Importing this package does not import torch: robot-side code can use :class:`PolicyClient` with
only numpy, msgpack and websockets installed.
"""

from xwam.serve.client import PolicyClient
from xwam.serve.msgpack_numpy import MsgpackNumpyError, packb, unpackb
from xwam.serve.server import PolicyServer, ServablePolicy, ServerThread, serve_until_signal

__all__ = [
    "MsgpackNumpyError",
    "PolicyClient",
    "PolicyServer",
    "ServablePolicy",
    "ServerThread",
    "packb",
    "serve_until_signal",
    "unpackb",
]
