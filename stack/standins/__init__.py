"""Stand-ins for the hospital's services: the DSH (FTPS), the Cogstack API, EMAP, the VNA."""
