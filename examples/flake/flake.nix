# The demo as a flake jobset: Hydra (and Kiln) evaluate `hydraJobs` (falling back to `checks`),
# in pure evaluation mode, walking nested attribute sets; a job's name is its attribute path
# (`shout.x86_64-linux`). Nothing here needs nixpkgs or the network.
#
#   nix --extra-experimental-features 'nix-command flakes' eval .#hydraJobs --apply builtins.attrNames
#   nix --extra-experimental-features 'nix-command flakes' build .#hydraJobs.shout.x86_64-linux \
#     --option sandbox true --option sandbox-paths "/bin/sh=/bin/busybox /bin/busybox"
{
  description = "A Kiln flake jobset built by busybox alone";

  outputs = { self }:
    let
      # Pure evaluation has no builtins.currentSystem: flakes name their systems.
      system = "x86_64-linux";
      inherit (import ./lib.nix { inherit system; }) mkJob aggregate;

      greeting = mkJob {
        name = "flake-greeting";
        script = ''
          echo "Hello from a flake" > $out
        '';
        meta.description = "A greeting";
      };
      shout = mkJob {
        name = "flake-shout";
        inherit greeting;
        script = ''
          tr a-z A-Z < $greeting > $out
        '';
        meta = {
          description = "The greeting, louder";
          schedulingPriority = 150;
        };
      };
      # The commit the flake was evaluated at: Kiln passes it as `self.rev`, and dates the
      # checkout at the commit time (`self.lastModified`), as for a git flake.
      revision = mkJob {
        name = "flake-revision";
        script = ''
          echo "${self.rev or "dirty"} ${toString (self.lastModified or 0)}" > $out
        '';
      };
    in
    {
      packages.${system} = { inherit greeting shout; };

      hydraJobs = {
        greeting.${system} = greeting;
        shout.${system} = shout;
        revision.${system} = revision;
        release = aggregate {
          name = "flake-release";
          constituents = [ "greeting.${system}" "shout.${system}" ];
        };
      };

      # Used only by flakes without hydraJobs; here for `nix flake check`.
      checks.${system}.shout-is-loud = mkJob {
        name = "flake-check-shout";
        inherit shout;
        script = ''
          grep -q "HELLO FROM A FLAKE" $shout
          touch $out
        '';
      };
    };
}
