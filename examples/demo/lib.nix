# Helpers for the demo jobset: derivations built by busybox alone, without nixpkgs.
{ system }:
rec {
  # Runs before every build script: stop at the first error, and put every busybox applet on
  # PATH (in the sandbox, builders see only /bin/sh, /bin/busybox and their inputs).
  prelude = ''
    set -eu
    /bin/busybox mkdir -p "$TMPDIR/.bin"
    /bin/busybox --install -s "$TMPDIR/.bin"
    export PATH="$TMPDIR/.bin"
  '';

  # mkJob { name, script, meta ? {}, ... }: a derivation that runs `script` with /bin/sh.
  # Every other attribute is passed to the builder's environment, except `meta`, which is kept
  # out of the derivation (as nixpkgs' mkDerivation does) and attached to the result for Hydra
  # to read: description, schedulingPriority, timeout, maxSilent...
  mkJob = { name, script, meta ? { }, ... }@attrs:
    let
      drv = derivation (builtins.removeAttrs attrs [ "script" "meta" ] // {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" (prelude + script) ];
      });
    in
    drv // { inherit meta; };

  # Marks a nested attribute set for nix-instantiate and nix-build, which (unlike Hydra) only
  # descend into sets that ask for it.
  nested = attrs: attrs // { recurseForDerivations = true; };
}
