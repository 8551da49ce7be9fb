"""Black-box access: the variation protocol, its HTTP and command back ends, the local back end and the server."""
