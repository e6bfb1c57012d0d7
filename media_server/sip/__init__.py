"""SIP/RTP gateway: phones, PBXs and SIP trunks call the agent (RFC 3261, 3264, 3550, 3581, 4733).

One concept per module: ``message`` (strict, bounded parsing and serialising), ``transaction``
(RFC 3261 timers as I/O-free state machines), ``dialog``, ``sdp`` (offer/answer for plain
RTP), ``g711``, ``jitter``, ``dtmf`` (RFC 4733), ``rtp`` (the media leg), ``auth`` (digest),
``routing`` (request-URI -> persona or room), ``call`` (:class:`SipCall`, a ``Call``
transport), ``transport`` (UDP and TCP sockets) and ``server`` (the user agent core: UAS and UAC).
"""
