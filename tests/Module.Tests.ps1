#Requires -Version 7.0
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    $script:ModulePath = Get-TestModulePath
    $script:ModuleDir = Split-Path $ModulePath
    Import-Module $ModulePath -Force
}

Describe 'The built module (out/BastionTools)' {
    It 'passes Test-ModuleManifest' {
        { Test-ModuleManifest $ModulePath -ErrorAction Stop } | Should -Not -Throw
    }

    It 'declares both editions, PowerShell 5.1 minimum and an explicit cmdlet list' {
        $data = Import-PowerShellDataFile $ModulePath
        $data.CompatiblePSEditions | Should -Be @('Desktop', 'Core')
        $data.PowerShellVersion | Should -Be '5.1'
        $data.CmdletsToExport | Should -Not -Contain '*'
        $data.CmdletsToExport | Should -Contain 'New-RdsIamToken'
        $data.FunctionsToExport | Should -BeNullOrEmpty
        $data.AliasesToExport | Should -BeNullOrEmpty
        $data.VariablesToExport | Should -BeNullOrEmpty
    }

    It 'exports exactly the cmdlets the manifest lists, and nothing else' {
        $data = Import-PowerShellDataFile $ModulePath
        $module = Get-Module BastionTools
        @($module.ExportedCmdlets.Keys | Sort-Object) | Should -Be @($data.CmdletsToExport | Sort-Object)
        $module.ExportedFunctions.Count | Should -Be 0
        $module.ExportedAliases.Count | Should -Be 0
        $module.ExportedVariables.Count | Should -Be 0
    }

    It 'is the same manifest as the repository root, with the version the assembly carries' {
        $root = Import-PowerShellDataFile (Join-Path $PSScriptRoot '../BastionTools.psd1')
        $built = Import-PowerShellDataFile $ModulePath
        $built.ModuleVersion | Should -Be $root.ModuleVersion
        $asm = [System.Reflection.AssemblyName]::GetAssemblyName((Join-Path $ModuleDir 'bin/lib/BastionTools.dll'))
        '{0}.{1}.{2}' -f $asm.Version.Major, $asm.Version.Minor, $asm.Version.Build | Should -Be $root.ModuleVersion
    }

    It 'loads its core and the AWS SDK into the BastionTools load context, not the default one' {
        $contexts = [AppDomain]::CurrentDomain.GetAssemblies() |
            Where-Object { $_.GetName().Name -in 'BastionTools', 'AWSSDK.Core' -and $_.Location -like "$ModuleDir*" } |
            ForEach-Object { [System.Runtime.Loader.AssemblyLoadContext]::GetLoadContext($_).Name }
        $contexts | Should -Not -BeNullOrEmpty
        $contexts | Should -Not -Contain 'Default'
        $contexts | Sort-Object -Unique | Should -Be 'BastionTools'
    }

    It 'has a format view for every output type' {
        $views = ([xml](Get-Content -Raw (Join-Path $ModuleDir 'BastionTools.Format.ps1xml'))).Configuration.ViewDefinitions.View.ViewSelectedBy.TypeName
        foreach ($type in 'BastionTools.BastionSession', 'BastionTools.BastionInstance', 'BastionTools.IamPostgresConnection', 'BastionTools.RdsIamGrant') {
            $views | Should -Contain $type
        }
        $outputTypes = Get-Command -Module BastionTools | ForEach-Object { $_.OutputType.Type } | Where-Object { $_ -and $_.Namespace -eq 'BastionTools' } | ForEach-Object FullName | Sort-Object -Unique
        foreach ($t in $outputTypes) { $views | Should -Contain $t }
    }

    It 'ships the RDS CA bundle as the default trust' {
        $bundle = Join-Path $ModuleDir 'certs/rds-global-bundle.pem'
        $bundle | Should -Exist
        (Get-FileHash $bundle -Algorithm SHA256).Hash | Should -Be '05C6B4A9BF4DAA95C888711481E19CC8E2E11AED4DE8DB759F51F4A6FCE64917'
    }

    It 'has no files that start with a byte order mark or contain tabs among its scripts' {
        Get-ChildItem $ModuleDir -Recurse -Include '*.ps1', '*.psm1', '*.psd1', '*.ps1xml' | ForEach-Object {
            $bytes = [System.IO.File]::ReadAllBytes($_.FullName)
            ($bytes.Length -ge 3 -and $bytes[0] -eq 0xEF -and $bytes[1] -eq 0xBB -and $bytes[2] -eq 0xBF) | Should -BeFalse -Because "$($_.Name) should have no BOM"
            [System.Text.Encoding]::UTF8.GetString($bytes).Contains("`t") | Should -BeFalse -Because "$($_.Name) should have no tabs"
        }
    }

    It 'imports again with -Force, and after Remove-Module, with working cmdlets' {
        Import-Module $ModulePath -Force -ErrorAction Stop
        Get-Command New-RdsIamToken -Module BastionTools -ErrorAction Stop | Should -Not -BeNullOrEmpty
        Remove-Module BastionTools
        Get-Command New-RdsIamToken -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        Import-Module $ModulePath -ErrorAction Stop
        New-RdsIamToken a.b.us-east-1.rds.amazonaws.com -UserName u -AccessKey AKIDEXAMPLE -SecretKey secretvalue | Should -BeLike 'a.b.us-east-1.rds.amazonaws.com:5432/?Action=connect*'
    }
}
