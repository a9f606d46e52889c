# Helpers for the flake jobset: derivations built by busybox alone (as in ../demo/lib.nix).
{ system }:
rec {
  prelude = ''
    set -eu
    /bin/busybox mkdir -p "$TMPDIR/.bin"
    /bin/busybox --install -s "$TMPDIR/.bin"
    export PATH="$TMPDIR/.bin"
  '';

  # mkJob { name, script, meta ? {}, ... }: `meta` stays out of the derivation, for Hydra.
  mkJob = { name, script, meta ? { }, ... }@attrs:
    derivation (builtins.removeAttrs attrs [ "script" "meta" ] // {
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" (prelude + script) ];
    }) // { inherit meta; };

  # An aggregate of jobs named by attribute path, resolved after evaluation.
  aggregate = { name, constituents }: mkJob {
    inherit name constituents;
    _hydraAggregate = true;
    script = ''
      echo "$constituents" > $out
    '';
  };
}
