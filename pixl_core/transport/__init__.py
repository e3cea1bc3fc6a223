"""Clients for what PIXL talks to over the network: Orthanc's REST API and the DSH's FTPS."""
