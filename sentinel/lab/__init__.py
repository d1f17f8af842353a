"""The lab and its stand-ins (tests, bench, `sentinel lab`); nothing at run time imports it."""
