namespace BastionTools
{
    /// <summary>Hooks the module's lifetime: Remove-Module ends the sessions it opened (listeners closed, sessions terminated).</summary>
    public static class ModuleLifetime
    {
        public static void OnRemove()
        {
            Commands.ConnectionRegistry.CloseAll();
            Ssm.SessionRegistry.StopAll();
        }
    }
}
