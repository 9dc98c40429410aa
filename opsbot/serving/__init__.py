"""The data plane: model loaders, the model server and the inference gateway."""

from typing import Final

#: The binary tensor extension's header (Open Inference Protocol v2, as Triton defines it): the
#: byte length of the JSON part of a body whose binary tensor data follows it.
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
#: Set by the gateway on the hop to an instance: the name the caller used for the service, which
#: the instance answers as ``model_name`` (a caller never sets it: the gateway forwards only the
#: headers it names).
MODEL_NAME_HEADER: Final = "X-Opsbot-Model-Name"
