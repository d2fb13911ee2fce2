from anechat.cli import main

# Guarded: worker processes started with "spawn" (parallel palettization) import this module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
