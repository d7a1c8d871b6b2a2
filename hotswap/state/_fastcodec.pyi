# The C module's interface (hotswap/state/_fastcodec.c); NotImplemented hands the work to the Python codec.
from types import NotImplementedType

from hotswap.state.types import StateValue

def encode(tree: object, /) -> bytes | NotImplementedType: ...
def decode(data: bytes | bytearray | memoryview, /) -> StateValue | NotImplementedType: ...
