"""
The reference stock-quote backend that wslb balances in its demo.

  - L{wslb_twisted.demo.quotes}: where quotes come from (a seeded random walk
    or a replayed CSV file) and the quote message;
  - L{wslb_twisted.demo.backend}: the WebSocket protocol speaking to clients
    and L{makeBackendService <wslb_twisted.demo.backend.makeBackendService>};
  - L{wslb_twisted.demo.healthport}: the HTTP resource on the health port,
    with its switches;
  - L{wslb_twisted.demo.backend_tap}: the C{twistd wslb-backend} command.
"""
