"""Linux networking through pyroute2: lab topology, mirror ports, tunnels, weighted routes, fences.

Never imports ``replay`` or ``appliance``. Needs root.
"""
