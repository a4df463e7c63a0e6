"""One IKE SA and its CHILD SAs: the exchanges of RFC 7296 as a sans-I/O state machine.

How this works
--------------
An :class:`IkeSa` is driven by its :class:`~ike_lite.endpoint.IkeEndpoint`: it receives
parsed messages (``receive``), timer ticks (``on_timer``) and local commands
(``rekey_child``, ``rekey_ike``, ``delete_child``, ``close``); it writes datagrams and
events back through the endpoint. Like strongSwan's task manager it owns both message-ID
counters (§2.2): at most one request of ours is in flight (window 1); further local work
waits in ``queue`` as *tasks*. A request is retransmitted with exponential backoff until
its response arrives or the tries run out (→ ``timeout`` / ``dead_peer``). The peer's
requests are processed in order; the last response is cached and re-sent when the
request is retransmitted (§2.1).

Tasks (one handler pair per exchange, as strongSwan's ``tasks/``):

========================  ===============================  ================================
task                      our request                      handler of the response
========================  ===============================  ================================
INIT (initiator)          IKE_SA_INIT                      ``_on_init_response``
AUTH (initiator)          IKE_AUTH + first CHILD SA        ``_on_auth_response``
CHILD_REKEY               CREATE_CHILD_SA + REKEY_SA       ``_on_child_rekey_response``
IKE_REKEY                 CREATE_CHILD_SA (IKE proposal)   ``_on_ike_rekey_response``
DELETE_CHILD / DELETE_IKE INFORMATIONAL + Delete           ``_on_delete_response``
DPD                       empty INFORMATIONAL              (liveness only)
========================  ===============================  ================================

Peer requests go to ``_REQUEST_HANDLERS`` by exchange type. Make-before-break: a rekeyed
CHILD SA is announced (``ChildSaUp`` with ``rekey_of``) before the old one is deleted; an
IKE SA rekey moves the CHILD SAs to a new :class:`IkeSa` with the same handle and the old
SA lingers in state REKEYED until its Delete exchange is done.
"""

from __future__ import annotations

from ike_lite.core import Child, Pending, Queued, SaCore, State, Task
from ike_lite.exchange_auth import AuthExchange
from ike_lite.exchange_create import CreateChildExchange
from ike_lite.exchange_info import InformationalExchange
from ike_lite.exchange_init import InitExchange


class IkeSa(InitExchange, AuthExchange, CreateChildExchange, InformationalExchange):
    """An IKE SA (either role) with its CHILD SAs; see the module docstring."""


__all__ = ["Child", "IkeSa", "Pending", "Queued", "SaCore", "State", "Task"]
