package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flick-vm/flick/api"
)

func (a *app) networkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Manage networks",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(a.networkCreateCommand(), a.networkLsCommand(), a.networkRmCommand(), a.networkInspectCommand())
	for _, c := range cmd.Commands() {
		c.DisableFlagsInUseLine = true
	}
	return cmd
}

func (a *app) networkCreateCommand() *cobra.Command {
	var subnet string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create [--subnet CIDR] NAME",
		Short: "Create a network: a bridge with NAT, isolated from other networks, with DNS names NAME.flick.internal",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			n, err := c.NetworkCreate(a.ctx, api.NetworkCreateRequest{Name: args[0], Subnet: subnet})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.stdout, n)
			}
			fmt.Fprintln(a.stdout, n.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&subnet, "subnet", "", "IPv4 subnet, e.g. 10.88.0.0/24 (default a free /24)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the network as JSON")
	return cmd
}

func (a *app) networkLsCommand() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "ls [-q] [--json]",
		Aliases: []string{"list"},
		Short:   "List networks",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.NetworkList(a.ctx)
			if err != nil {
				return err
			}
			if list == nil {
				list = []api.Network{}
			}
			if asJSON {
				return printJSON(a.stdout, list)
			}
			if quiet {
				for _, n := range list {
					fmt.Fprintln(a.stdout, n.Name)
				}
				return nil
			}
			now := time.Now()
			tw := tabwriter.NewWriter(a.stdout, 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSUBNET\tGATEWAY\tBRIDGE\tINSTANCES\tCREATED")
			for _, n := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, n.Subnet, n.Gateway, n.Bridge, n.Instances, ago(now, n.Created))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only names")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *app) networkRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NETWORK...",
		Aliases: []string{"remove"},
		Short:   "Remove networks that no instance uses",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.forEach(args, false, func(c *api.Client, name string) error {
				if err := c.NetworkRemove(a.ctx, name); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, name)
				return nil
			})
		},
	}
}

func (a *app) networkInspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect NETWORK",
		Short: "Show a network as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			n, err := c.NetworkInspect(a.ctx, args[0])
			if err != nil {
				return err
			}
			return printJSON(a.stdout, n)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", true, "print JSON (the only format)")
	return cmd
}
